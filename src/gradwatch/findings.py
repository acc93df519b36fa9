"""The Finding: one diagnosis, with the numbers behind it and what to try."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]

SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class Finding:
    """One thing gradwatch found about a model or a run.

    Attributes:
        kind: what was found: "vanishing", "exploding", "nonfinite", "dead", "saturated",
            "stalled", "healthy_deep", ...
        layers: the layer names concerned, input side first.
        steps: (first, last) training steps concerned; None for a one-batch checkup.
        severity: "info", "warning" or "error".
        message: one plain sentence a user can act on.
        evidence: the numbers behind the finding (JSON-serialisable).
        remedies: names of remedies to try, most promising first.
    """

    kind: str
    layers: tuple[str, ...]
    steps: tuple[int, int] | None
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    remedies: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (one line of ``findings.jsonl``)."""
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["steps"] = list(self.steps) if self.steps is not None else None
        d["remedies"] = list(self.remedies)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        steps = d.get("steps")
        return cls(
            kind=d["kind"],
            layers=tuple(d.get("layers", ())),
            steps=tuple(steps) if steps is not None else None,  # type: ignore[arg-type]
            severity=d.get("severity", "info"),
            message=d.get("message", ""),
            evidence=dict(d.get("evidence", {})),
            remedies=tuple(d.get("remedies", ())),
        )

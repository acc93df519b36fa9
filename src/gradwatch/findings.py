"""The Finding: one diagnosis, with the numbers behind it and what to try.

``repr(finding)`` is one short line; ``str(finding)`` the whole message, where and what to
try. The list of them that :func:`gradwatch.diagnose` returns is
:class:`gradwatch.verdicts.Findings`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]

SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}


#: Longest message shown by ``repr(finding)`` (the whole message is in ``str(finding)``).
REPR_MESSAGE = 60


@dataclass(frozen=True, repr=False)
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

    def __repr__(self) -> str:
        """One short line: kind, severity, layers (first, last, count), steps, message start."""
        message = self.message
        if len(message) > REPR_MESSAGE:
            message = message[: REPR_MESSAGE - 1].rstrip() + "…"
        return (
            f"Finding(kind={self.kind!r}, severity={self.severity!r}, "
            f"layers=[{_layer_span(self.layers)}], steps={self.steps!r}, message={message!r})"
        )

    def __str__(self) -> str:
        """``[error] vanishing in layers '0' … '24' (13 layers), steps 0-390: message``."""
        head = f"[{self.severity}] {self.kind}"
        if self.layers:
            head += f" in layers {_layer_span(self.layers)}"
        if self.steps is not None:
            head += f"{',' if self.layers else ' at'} steps {self.steps[0]}-{self.steps[1]}"
        text = f"{head}: {self.message}"
        if self.remedies:
            text += f"\n    try: {', '.join(self.remedies)}"
        return text

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


def _layer_span(layers: tuple[str, ...] | list[str]) -> str:
    """``'0', '2', '4'`` for up to three layers, else ``'0' … '24' (13 layers)``."""
    names = [repr(str(x)) for x in layers]
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]} … {names[-1]} ({len(names)} layers)"

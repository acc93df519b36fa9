"""The Finding: one diagnosis, with the numbers behind it and what to try.

``repr(finding)`` is one short line; ``str(finding)`` the whole message, where and what to
try. The list of them that :func:`gradwatch.diagnose` returns is
:class:`gradwatch.verdicts.Findings`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gradwatch.errors import GradwatchValueError
from gradwatch.jsonable import jsonable

Severity = Literal["info", "warning", "error"]
SEVERITIES = ("info", "warning", "error")

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


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def finding_problem(d: Any) -> str | None:
    """What keeps ``d`` from being a finding (a line of ``findings.jsonl``), or None.

    The one definition of a valid finding: what is written must load, and what loads is what
    could have been written. ``d`` is the form of :meth:`Finding.to_dict`: ``kind`` a
    non-empty string; ``layers`` and ``remedies`` lists of strings; ``steps`` None or
    ``[first, last]`` integers; ``severity`` one of "info", "warning", "error";
    ``message`` a string; ``evidence`` a dict.
    """
    if not isinstance(d, dict):
        return f"not an object ({type(d).__name__})"
    kind = d.get("kind")
    if not isinstance(kind, str) or not kind:
        return f"kind must be a non-empty string, got {kind!r:.40}"
    for key in ("layers", "remedies"):
        items = d.get(key, [])
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            return f"{key} must be a list of names (strings), got {items!r:.60}"
    steps = d.get("steps")
    if steps is not None and not (
        isinstance(steps, list) and len(steps) == 2 and all(_is_int(s) for s in steps)
    ):
        return f"steps must be None or (first, last) integers, got {steps!r:.60}"
    if d.get("severity", "info") not in SEVERITIES:
        return f"severity must be one of {', '.join(SEVERITIES)}, got {d.get('severity')!r:.40}"
    if not isinstance(d.get("message", ""), str):
        return f"message must be a string, got {type(d.get('message')).__name__}"
    if not isinstance(d.get("evidence", {}), dict):
        return f"evidence must be a dict, got {type(d.get('evidence')).__name__}"
    return None


def checked_dict(finding: Finding, name: str = "findings") -> dict[str, Any]:
    """``finding.to_dict()`` in JSON types, checked to be a finding that will load back.

    Raises:
        GradwatchValueError: naming ``name``, the finding's kind and the field that is wrong
            (a finding written that way would be skipped when the run is loaded).
    """
    problem = None
    for key in ("layers", "remedies"):
        value = getattr(finding, key)
        if isinstance(value, str | bytes) or not isinstance(value, tuple | list):
            problem = f"{key} must be a tuple of names, got {type(value).__name__} {value!r:.40}"
    if problem is None:
        try:
            d = jsonable(finding.to_dict())  # NumPy integers among the steps become ints
        except (TypeError, ValueError) as exc:  # steps or evidence of the wrong kind
            problem = f"it has no dict form ({exc})"
        else:
            problem = finding_problem(d)
    if problem is not None:
        raise GradwatchValueError(
            f"{name}: the Finding of kind {finding.kind!r:.40} is not valid: {problem}; build it "
            "as Finding(kind, layers=(...), steps=(first, last) or None, severity='info' | "
            "'warning' | 'error', message, evidence={...}, remedies=(...))"
        )
    return d

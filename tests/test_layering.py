"""A one-way house: imports run downward only, no cycles, no private names across packages.

Every module under src/gradwatch is parsed (``ast``), counting imports made inside functions,
and each import is checked against the layer order of DESIGN.md:

    bottom (argcheck, errors, findings, graph, handoff, jsonable, layers, probes, schedule,
            structure, verdicts, version, wording: helpers that import only each other)
    → stats, theory → store → monitor (watch) → check → diagnose → remedies → report
    → integrations, experiments, demo → commands, cli, the package root (top)

``theory`` sits low, beside ``stats``: it is pure mathematics (mean-field maps, Jacobian
spectra) that reads nothing recorded, and ``check`` and the remedies use it. A unit may import
from its own layer (``integrations`` and ``experiments`` are siblings), never from a higher
one; the cycle check below keeps siblings honest.

Offences are reported as ``file:line``. ``PENDING`` lists the offences that other pieces of
work remove (each with what removes it); the test fails on any offence not listed, and the
listed ones are reported (xfail) until they are gone.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "gradwatch"

BOTTOM = (
    "argcheck", "errors", "findings", "graph", "handoff", "jsonable", "layers", "schedule",
    "structure",
    "verdicts", "version", "wording",
)
ORDER: list[tuple[str, ...]] = [
    BOTTOM,
    ("stats", "theory"),
    ("store",),
    ("monitor",),
    ("check", "probes"),
    ("diagnose",),
    ("remedies",),
    ("report",),
    ("integrations", "experiments", "demo"),
    ("commands", "cli", ""),  # "" is the package root, gradwatch/__init__.py
]
LAYER = {unit: i for i, units in enumerate(ORDER) for unit in units}

#: Offences other pieces of work remove: (importing unit, imported module) -> who fixes it.
PENDING: dict[tuple[str, str], str] = {
}


def unit_of(module: str) -> str:
    """The layering unit of a dotted module name: its first component under gradwatch."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path):
    """(line, imported module, imported names) of every gradwatch import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "gradwatch" or alias.name.startswith("gradwatch."):
                    yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "gradwatch" or mod.startswith("gradwatch."):
                yield node.lineno, mod, tuple(a.name for a in node.names)


def offences() -> list[tuple[str, str, str, str]]:
    """(file:line, kind, importing unit, imported module) for every offence in the tree."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        here = module_name(path)
        unit = unit_of(here)
        where = f"{path.relative_to(SRC.parents[1])}"
        for line, mod, names in imports(path):
            target = unit_of(mod)
            # a package's names imported from the package root count as the module's own
            if mod == "gradwatch" and names:
                subs = [n for n in names if (SRC / n).exists() or (SRC / f"{n}.py").exists()]
                if subs and len(subs) == len(names):
                    for n in subs:
                        if LAYER.get(n, 99) > LAYER.get(unit, 99):
                            found.append((f"{where}:{line}", "upward", unit, f"gradwatch.{n}"))
                    continue
            if target != unit and LAYER[target] > LAYER[unit]:
                found.append((f"{where}:{line}", "upward", unit, mod))
            if target != unit:
                private_mod = any(p.startswith("_") for p in mod.split(".")[1:])
                private_name = any(n.startswith("_") and n != "__version__" for n in names)
                if private_mod or private_name:
                    found.append((f"{where}:{line}", "private", unit, mod))
    return found


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        unit = unit_of(module_name(path))
        for _, mod, names in imports(path):
            target = unit_of(mod)
            if mod == "gradwatch" and names:
                for n in names:
                    if (SRC / n).exists() or (SRC / f"{n}.py").exists():
                        graph.setdefault(unit, set()).add(n)
                continue
            if target != unit:
                graph.setdefault(unit, set()).add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(p)) for p in SRC.rglob("*.py")}
    assert units <= set(LAYER), f"give these a layer in ORDER: {sorted(units - set(LAYER))}"


def test_imports_run_downward_and_take_no_private_names_across_packages():
    bad = [o for o in offences() if (o[2], o[3]) not in PENDING]
    assert not bad, "layering offences:\n" + "\n".join(
        f"{where}: {kind} import of {mod} from {unit or 'gradwatch'}"
        for where, kind, unit, mod in bad
    )


def test_no_import_cycle_between_subpackages():
    graph = unit_graph()
    for unit, mod in PENDING:  # the pending offences' edges are reported by the xfail below
        graph.get(unit, set()).discard(unit_of(mod))
    assert not cycles(graph), f"import cycles between subpackages: {cycles(graph)}"


def test_pending_offences_are_gone():
    left = [o for o in offences() if (o[2], o[3]) in PENDING]
    assert not left, "\n".join(
        f"{w}: {k} import of {m} ({PENDING[(u, m)]})" for w, k, u, m in left
    )


def test_the_checker_sees_an_upward_import_inside_a_function(tmp_path):
    # the checker itself: a function-level import from a higher layer is found
    src = "def f():\n    from gradwatch.report import html\n"
    tree = ast.parse(src)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert LAYER[unit_of(node.module)] > LAYER["stats"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]

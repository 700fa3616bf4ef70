"""The house by stage (docs/architecture.md): the import graph has no circle, no module takes another's private
names, the top level stays small, an import inside a function says why, and the public paths keep working.

The graph is built with `ast` from every module of the package, imports inside functions included, so later work
cannot undo the layout without this test saying where.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "updelta"
MAX_TOP_LEVEL = 10
# The compiled C kernel is a private module by name; its glue module is the one place that imports it.
PRIVATE_ALLOWED = {("updelta.scan.jobs.kernel", "updelta._fused")}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(target module, imported name or None, lineno, inside a function) for each import of an updelta module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - n.level + 1] + ([n.module] if n.module else []))
            if not base.startswith("updelta"):
                continue
            for a in n.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES or sub == "updelta._fused":
                    yield sub, None, n.lineno, id(n) in inner
                else:
                    yield base, a.name, n.lineno, id(n) in inner
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.startswith("updelta"):
                    yield a.name, None, n.lineno, id(n) in inner


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _, _ in _imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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


def test_no_import_circles():
    graph = _graph()
    assert sum(len(v) for v in graph.values()) > 100  # the graph was really built
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_crosses_a_module():
    bad = []
    for m, p in MODULES.items():
        for target, name, line, _ in _imports(m, p):
            private_module = target.rpartition(".")[2].startswith("_") and target != "updelta._version"
            if (name and name.startswith("_") and name != "__version__") or (
                    private_module and (m, target) not in PRIVATE_ALLOWED and target.rpartition(".")[0] != m):
                bad.append(f"{p.relative_to(PKG.parent)}:{line}: {target} {name or ''}")
    assert bad == []


def _is_shim(path: Path) -> bool:
    """A module of imports (and a docstring / __all__) only: a re-export kept for a public path."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(n, (ast.Import, ast.ImportFrom)) or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
               or (isinstance(n, ast.Assign) and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["__all__"])
               for n in body)


def test_top_level_holds_the_public_face_only():
    top = sorted(p.stem for p in PKG.glob("*.py") if p.stem != "__init__" and not _is_shim(p))
    assert len(top) <= MAX_TOP_LEVEL, top
    assert set(top) <= {"api", "cli", "options", "errors", "atomic", "_version"}, top


def test_imports_inside_functions_say_why():
    """An import inside a function keeps torch or an optional extra off a light path; a comment says which."""
    bad = []
    for m, p in MODULES.items():
        lines = p.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(f):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    said = any("#" in lines[i] for i in range(n.lineno - 1, n.end_lineno)) or (
                        lines[n.lineno - 2].strip().startswith("#"))
                    if not said:
                        bad.append(f"{p.relative_to(PKG.parent)}:{n.lineno}: {lines[n.lineno - 1].strip()}")
    assert sorted(set(bad)) == []


def test_nothing_imports_the_cli():
    users = [m for m, p in MODULES.items() for t, _, _, _ in _imports(m, p) if t == "updelta.cli" and m != "updelta.cli"]
    assert users == []


# Paths used in the README's Python examples, the notebook and docs/integrations.md (re-exports where they moved).
PUBLIC = [
    ("updelta", "diff"), ("updelta", "compare"), ("updelta", "load"), ("updelta", "DiffOptions"), ("updelta", "Result"),
    ("updelta.trajectory", "trajectory"), ("updelta.trajectory", "load_table"), ("updelta.trajectory", "Trajectory"),
    ("updelta.plot", "heatmap"), ("updelta.plot", "layer_profile"), ("updelta.plot", "run_similarity"),
    ("updelta.plot", "distribution"), ("updelta.plot", "savefig"), ("updelta.report", "write_report"),
    ("updelta.report", "Finding"), ("updelta.integrations.transformers", "track"),
    ("updelta.integrations.loop", "Tracker"), ("updelta.models.smollm2", "smollm2_path"),
    ("updelta.options", "DiffOptions"), ("updelta.options", "ReportOptions"), ("updelta.errors", "UpdeltaError"),
    ("updelta.cli", "main"), ("updelta.cli", "app"), ("updelta.io", "open_checkpoint"),
]


@pytest.mark.parametrize("module,name", PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_public_paths_keep_working(module, name):
    assert getattr(importlib.import_module(module), name) is not None


def test_option_defaults_are_declared_once():
    """No module repeats a numeric default of an options field (`atol = 1e-5`, `get("eta", 1e-3)`, ...): it
    takes the field's default from `updelta.options` (or `shared(...)` for a field of another options class)."""
    import dataclasses
    import re

    from updelta.options import DiffOptions

    numeric = {f.name: f.default for f in dataclasses.fields(DiffOptions)
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool) and f.default not in (0, 1)}
    assert {"atol", "eta", "topk"} <= set(numeric)
    num = r"([0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
    bad = []
    for m, p in MODULES.items():
        if m == "updelta.options":
            continue
        text = p.read_text(encoding="utf-8")
        for name, default in numeric.items():
            pats = (rf"\b{name}\s*(?::\s*[\w\[\]|., ]+?)?\s*=\s*{num}(?![\w.])", rf"get\(\s*[\"']{name}[\"']\s*,\s*{num}\s*\)")
            for pat in pats:
                for hit in re.finditer(pat, text):
                    if float(hit.group(1).replace("_", "")) == float(default):
                        line = text.count("\n", 0, hit.start()) + 1
                        bad.append(f"{p.relative_to(PKG.parent)}:{line}: {hit.group(0)}")
    assert bad == []


def test_no_submodule_shadows_a_name_its_package_exports():
    """A package that exports a name which is also one of its submodules' names must load that submodule itself:
    otherwise the first `import pkg.name` elsewhere replaces the exported function by the module (the trade-off
    figure's `updelta.plot.tradeoff` was broken this way, depending on test order). Checked in a fresh process."""
    import subprocess
    import sys

    code = r"""
import importlib, pkgutil, sys, json
from pathlib import Path
bad = []
for m in json.loads(sys.argv[1]):
    pkg = importlib.import_module(m)
    for s in pkgutil.iter_modules(pkg.__path__):
        v = pkg.__dict__.get(s.name)
        if v is not None and getattr(v, "__name__", None) != f"{m}.{s.name}" and f"{m}.{s.name}" not in sys.modules:
            bad.append(f"{m}.{s.name}")
print(json.dumps(bad))
"""
    import json

    pkgs = sorted(m for m, p in MODULES.items() if p.name == "__init__.py")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(pkgs)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []

"""One import package, one direction of dependency: read from the source, checked after install."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> the import package it installs as
FOLDERS = {"noduleflow": "noduleflow", "engine": "noduleflow.engine", "trainer": "noduleflow.trainer",
           "export": "noduleflow.export", "bench": "noduleflow.bench"}
# layer -> the layers it may import. The runtime (engine) imports no other layer; the application
# (the top-level package: API, CLI, service) may import every layer.
LAYERS = {
    "engine": {"engine"},
    "synthetic": {"engine", "synthetic"},
    "trainer": {"engine", "synthetic", "trainer"},
    "export": {"engine", "synthetic", "trainer", "export"},
    "bench": {"engine", "synthetic", "trainer", "export", "bench", "app"},
    "app": {"engine", "synthetic", "trainer", "export", "bench", "app"},
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "noduleflow":
        return None
    if len(parts) > 1 and parts[1] in LAYERS and parts[1] != "app":
        return parts[1]
    return "app"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]]] + list(rel.parts[1:])
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import statement and importlib.import_module("...") call."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if not node.module]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) ==
              "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
            out.append((node.lineno, node.args[0].value))
    return out


def _sources():
    for folder in FOLDERS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_layers_import_only_downwards():
    bad = []
    for path in _sources():
        own = _layer(_module_name(path))
        for line, mod in _imports(path):
            layer = _layer(mod)
            if layer is not None and layer not in LAYERS[own]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {mod} ({layer})")
    assert not bad, "\n".join(bad)


def test_engine_names_nothing_above_it():
    # also catches a module path hidden in a string (a lazy import by name)
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "engine").rglob("*.py"))
           for i, line in enumerate(p.read_text().splitlines(), 1)
           if any(f"noduleflow.{x}" in line for x in ("trainer", "export", "bench", "cli", "serve", "synthetic",
                                                        "commands"))]
    assert not bad, bad


def test_every_package_folder_is_installed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    assert cfg["package-dir"] == {v: k for k, v in FOLDERS.items()}
    found = {_module_name(p) for p in _sources() if p.name == "__init__.py"}
    assert found == listed, f"not listed: {sorted(found - listed)}; listed, no folder: {sorted(listed - found)}"


def test_only_noduleflow_is_importable(tmp_path):
    # run outside the repository, so that its folders are not on sys.path by way of the cwd
    code = ("import importlib.util as u, json, noduleflow, noduleflow.engine, noduleflow.trainer, "
            "noduleflow.export, noduleflow.bench; "
            "print(json.dumps({n: u.find_spec(n) is not None for n in ('engine', 'trainer', 'export', 'bench')}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == '{"engine": false, "trainer": false, "export": false, "bench": false}'


@pytest.mark.parametrize("name", ["Detector", "Detections", "load_volume", "lung_mask", "resample",
                                  "NoduleflowError", "VolumeError", "__version__"])
def test_public_api(name):
    import noduleflow

    assert getattr(noduleflow, name) is not None
    assert name in noduleflow.__all__


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in _sources()}


def _module_graph() -> dict[str, set[str]]:
    """Package module -> the package modules it imports, counting every import statement, those
    inside functions too (a function-level import is no way around a cycle)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for _, mod in _imports(path):
            # `from pkg import name` names a submodule when pkg.name is one
            deps |= {m for m in (mod, *(f"{mod}.{n}" for n in _from_names(path, mod))) if m in mods and m != name}
        graph[name] = deps
    return graph


def _from_names(path: Path, mod: str) -> list[str]:
    return [a.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
            for a in node.names if node.module and mod.endswith(node.module)]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
    return sorted(out)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(_module_graph())
    assert not cycles, f"import cycles (imports inside functions count): {cycles}"


def test_no_private_names_imported_from_another_module():
    """A leading underscore means "this module's own": no module imports such a name from another
    (dunders such as __version__ excepted)."""
    bad = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name} from {node.module or '.'}"
                        for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "\n".join(bad)

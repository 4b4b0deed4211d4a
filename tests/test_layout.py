"""One import package, one direction of dependency: read from the source, checked after install."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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

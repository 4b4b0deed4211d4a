"""The engine never loads torch: checked in a fresh interpreter."""
import json
import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        check=True, capture_output=True, text=True,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_engine_import_does_not_load_torch():
    mods = _modules_after("import noduleflow, noduleflow.engine.io, noduleflow.engine.detector, "
                          "noduleflow.engine.backends.onnxruntime, noduleflow.cli")
    assert "noduleflow.engine.io" in mods
    assert not any(m == "torch" or m.startswith("torch.") for m in mods)


def test_cli_help_does_not_load_torch():
    mods = _modules_after("import noduleflow.cli as c; c.build_parser()")
    assert "noduleflow.cli" in mods
    assert not any(m == "torch" or m.startswith("torch.") for m in mods)

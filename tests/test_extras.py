"""Every command that needs an optional extra says so in one line, before doing any work."""
from __future__ import annotations

import subprocess
import sys

import pytest

from noduleflow.engine.extras import extra_packages

# A meta-path finder that hides one package, as if its extra were not installed.
HIDE = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == {mod!r} or name.startswith({mod!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
from noduleflow.cli import main
sys.exit(main({argv!r}))
"""


def _run(mod: str, argv: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE.format(mod=mod, argv=argv)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("extra, argv", [
    ("train", ["train", "--config", "nothing.toml", "--out", "runs/x"]),
    ("export", ["export", "nothing.safetensors", "pkg"]),
    ("bench", ["bench", "speed", "--no-baseline"]),
    ("bench", ["bench", "accuracy", "--phantoms", "1"]),
    ("bench", ["bench", "froc", "--annotations", "a.csv", "--candidates", "c.csv", "--plot", "f.png"]),
    ("serve", ["serve", "--spool", "spool"]),
    ("serve", ["bench", "serve-load"]),
])
def test_missing_extra_is_one_line(extra, argv, tmp_path):
    mod = extra_packages(extra)[0]
    r = _run(mod, argv, tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"pip install 'noduleflow[{extra}]'" in lines[0] and mod in lines[0]
    assert list(tmp_path.iterdir()) == []  # no work done, nothing written


def test_extras_come_from_the_package_metadata():
    assert "torch" in extra_packages("train") and "skimage" in extra_packages("bench")
    assert {"pynetdicom", "highdicom"} <= set(extra_packages("serve"))


def test_bench_outputs_default_outside_the_source_tree():
    """Every bench subcommand writes to ./bench-<name> in the working folder unless told otherwise."""
    import argparse

    from noduleflow.cli import build_parser

    bench = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["bench"]
    subs = next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction)).choices
    checked = 0
    for name, parser in subs.items():
        out = [a for a in parser._actions if "--out" in a.option_strings]
        if out:
            assert out[0].default == f"bench-{name}", (name, out[0].default)
            checked += 1
    assert checked >= 4

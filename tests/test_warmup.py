"""`noduleflow warmup` compiles (or loads) the kernels and reports first and warm detection times."""
from __future__ import annotations

import re

from noduleflow.cli import main


def test_warmup_reports_first_and_warm(capsys):
    assert main(["warmup"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"first detection ([\d.]+) s .*then ([\d.]+) s warm", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, out
    # a scan finer than 2 mm in plane too: the lung mask's block-grid kernels are compiled as well
    assert re.search(r"finer than 2 mm in plane .*: first [\d.]+ s, then [\d.]+ s warm", out), out

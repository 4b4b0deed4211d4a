"""`noduleflow warmup` compiles (or loads) the kernels and reports first and warm detection times."""
from __future__ import annotations

import re

import pytest

from noduleflow.cli import main


def test_warmup_reports_first_and_warm(capsys):
    assert main(["warmup"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"first detection ([\d.]+) s .*then ([\d.]+) s warm", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, out
    # a scan finer than 2 mm in plane too: the lung mask's block-grid kernels are compiled as well
    assert re.search(r"finer than 2 mm in plane .*: first [\d.]+ s, then [\d.]+ s warm", out), out


def test_cold_start_warm_twice_runs_each_precision():
    """`noduleflow warmup`'s measured detection on the shipped package,
    fp32 and with stage 2 in INT8 (`--precision int8`); an INT8 graph the package lacks is refused."""
    from noduleflow.commands.warmup import warm_twice
    from noduleflow.engine import PackageError

    for precision in ("fp32", "int8"):
        first, warm = warm_twice(warm_repeats=1, backend="onnxruntime-cpu", precision=precision,
                                 shape_zyx=(48, 128, 128), spacing_zyx_mm=(5.0, 2.2, 2.2))
        assert first > 0 and warm > 0
    with pytest.raises(PackageError, match="dense_int8"):
        warm_twice(warm_repeats=1, backend="onnxruntime-cpu", precision="int8", stages="1")

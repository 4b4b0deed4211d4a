"""Through the CLI: a corrupt input is one line on stderr and exit 2, never a traceback;
a usable scan with a recorded warning prints it and exits 0."""
from __future__ import annotations

import logging
import os

import pytest

from noduleflow.cli import main as cli
from noduleflow.engine.io import save_volume

from .corrupt import edit, phantom, series, setter


def _mhd_dimsize_zero(tmp_path, master_root):
    p = save_volume(phantom(), tmp_path / "scan.mhd")
    p.write_text(p.read_text().replace("DimSize = 64 64 20", "DimSize = 64 64 0"))
    return p, "0 slice"


def _mhd_fifo_data(tmp_path, master_root):
    p = save_volume(phantom(), tmp_path / "scan.mhd")
    os.mkfifo(tmp_path / "pipe.raw")
    p.write_text(p.read_text().replace("scan.raw", "pipe.raw"))
    return p, "not a regular file"


def _dicom_spacing_1e30(tmp_path, master_root):
    edit(series(tmp_path, master_root), setter(PixelSpacing=[1e30, 1e30]))
    return tmp_path / "s", "PixelSpacing"


def _dicom_single_file(tmp_path, master_root):
    return series(tmp_path, master_root)[3], "fewer than the 10"


def _dicom_slope_zero(tmp_path, master_root):
    edit(series(tmp_path, master_root), setter(RescaleSlope="0"))
    return tmp_path / "s", "RescaleSlope must be > 0"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("make", [_mhd_dimsize_zero, _mhd_fifo_data, _dicom_spacing_1e30, _dicom_single_file,
                                  _dicom_slope_zero])
def test_inspect_refuses_in_one_line(tmp_path, master_root, capsys, make):
    path, expected = make(tmp_path, master_root)
    assert cli(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("noduleflow inspect: error:") and err.count("\n") == 0, err
    assert expected in err and "Traceback" not in err


@pytest.mark.timeout(10)
def test_inspect_shows_a_recorded_warning(tmp_path, master_root, capsys, caplog):
    paths = series(tmp_path, master_root)
    paths[-1].write_bytes(b"")  # the last slice lost in transfer: usable, but said
    with caplog.at_level(logging.WARNING):
        assert cli(["inspect", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "warning" in out and paths[-1].name in out
    assert any(paths[-1].name in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

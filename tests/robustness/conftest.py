"""Fixtures for the loader robustness suite and a one-line tally of the outcomes."""
from __future__ import annotations

import pytest

from .corrupt import TALLY


@pytest.fixture(scope="session")
def master_root(tmp_path_factory):
    """Where the phantom's pristine series is written once; cases copy it."""
    return tmp_path_factory.mktemp("robustness-master")


def pytest_terminal_summary(terminalreporter):
    if TALLY:
        total = sum(TALLY.values())
        terminalreporter.write_line(
            f"loader robustness: {total} loads: {TALLY['volume']} Volume, {TALLY['volume+warning']} "
            f"Volume+warning, {TALLY['error']} VolumeError (any other exception fails its test)")

"""The CUDA gather kernel's logic, run on the CPU by numba's CUDA simulator."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = r"""
import numpy as np
from noduleflow.engine.patches import gather
from noduleflow.engine.patches_cuda import gather_to_host
rng = np.random.default_rng(0)
hu = rng.integers(-1500, 900, (30, 34, 38)).astype(np.int16)
c = np.array([[15, 17, 19], [0, 0, 0], [29, 33, 37], [2, 30, 5]])
ref = gather(hu, c)
got = gather_to_host(hu, c)
print(float(np.abs(ref - got).max()))
"""


def test_cuda_gather_equals_cpu_gather_in_simulator():
    try:
        import numba.cuda  # noqa: F401
    except ImportError:
        pytest.skip("numba.cuda not importable")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}  # must be set before numba.cuda is imported
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip().splitlines()[-1]) < 1e-6

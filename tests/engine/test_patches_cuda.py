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


CONTEXT_CODE = r"""
import numpy as np
from noduleflow.engine.context import ContextVolume
from noduleflow.engine.patches import Normalisation
from noduleflow.engine.patches_cuda import DeviceContextVolume
from numba import cuda
rng = np.random.default_rng(1)
hu = rng.integers(-1200, 700, (26, 30, 34)).astype(np.int16)
c = np.array([[13.2, 15.0, 16.7], [25, 29, 33]])  # one inside, one at the far corner (padding)
norm = Normalisation(-1000.0, 400.0, pad_hu=-1000.0)
ref = ContextVolume(hu, norm, 41, 2).patches(c)
dev = DeviceContextVolume(hu, norm, 41, 2)
buf = cuda.device_array((3, 2, 41, 41, 41), dtype=np.float32)  # a larger buffer, filled in front
got = dev.patches(c, buf).copy_to_host()
assert got.shape == ref.shape == (2, 2, 41, 41, 41), (got.shape, ref.shape)
assert 0 < ref[:, 1].std() and (ref[1, 0, -1] == 0.0).all()  # the 2 mm channel has content; padding read as air
worst = float(np.abs(ref - got).max())
try:
    dev.patches(c, cuda.device_array((1, 2, 41, 41, 41), dtype=np.float32))
    raise SystemExit("a too-small buffer was accepted")
except Exception as exc:
    assert "device context buffer" in str(exc), exc
print(worst)
"""


def test_cuda_context_patches_equal_cpu_context_patches_in_simulator():
    """Stage 2's context patches gathered on the device (1 mm and 2 mm volumes uploaded once,
    both scales written into one device batch) equal the CPU `ContextVolume`'s, under numba's
    CUDA simulator."""
    try:
        import numba.cuda  # noqa: F401
    except ImportError:
        pytest.skip("numba.cuda not importable")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    r = subprocess.run([sys.executable, "-c", CONTEXT_CODE], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip().splitlines()[-1]) < 1e-6

"""The CUDA gather kernel's logic, run on the CPU by numba's CUDA simulator."""
from __future__ import annotations

from cudasim import simulated

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
    assert simulated(CODE) < 1e-6


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
    assert simulated(CONTEXT_CODE) < 1e-6


VIEWS_CODE = r"""
import numpy as np
from noduleflow.engine.context import ContextVolume
from noduleflow.engine.patches import Normalisation
from noduleflow.engine.patches_cuda import DeviceContextVolume, gather_device
from numba import cuda
rng = np.random.default_rng(2)
hu = rng.integers(-1200, 700, (20, 22, 24)).astype(np.int16)
c = np.array([[10.4, 3.0, 20.6], [1, 21, 12]])  # near the borders: mirrored padding too
norm = Normalisation(-1000.0, 400.0, pad_hu=-1000.0)
ref = list(ContextVolume(hu, norm, 9, 2).views(c, 0, 8))
got = [v.copy_to_host() for v in DeviceContextVolume(hu, norm, 9, 2).views(c, 0, 8)]
assert len(ref) == len(got) == 8 and all(r.shape == (2, 2, 9, 9, 9) for r in ref)
assert all(np.abs(ref[0] - r).max() > 0 for r in ref[1:])  # every flip is another batch
part = [v.copy_to_host() for v in DeviceContextVolume(hu, norm, 9, 2).views(c, 3, 6)]
assert all(np.array_equal(a, b) for a, b in zip(part, got[3:6]))
for bad in (8, -1):
    try:
        gather_device(cuda.to_device(hu), cuda.to_device(np.zeros((1, 3), np.int64)),
                      cuda.device_array((1, 1, 9, 9, 9), np.float32), norm, 9, flip=bad)
        raise SystemExit(f"flip {bad} was accepted")
    except Exception as exc:
        assert "flip must be in 0..7" in str(exc), exc
print(max(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
"""


def test_cuda_context_flips_equal_cpu_flips_in_simulator():
    """The 8 mirrored views of stage 2's test-time augmentation gathered mirrored on the device
    equal `flips8` of the host patches (small patches: the simulator runs every thread in Python)."""
    assert simulated(VIEWS_CODE) < 1e-6


DETECTOR_CODE = r"""
import numpy as np
from noduleflow.engine.backends.base import Backend
from noduleflow.engine.detector import Detector
from noduleflow.engine.patches_cuda import DeviceContextVolume
from noduleflow.engine.preprocess import preprocess
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom


class HostCopy(Backend):
    # takes device arrays by copying them to the host (as a CPU-compiled torch backend does) and
    # runs the stage-2 graph in ONNX Runtime: the detector's device path without a GPU
    accepts_device_arrays = True

    def __init__(self, inner):
        super().__init__("stage2", inner.max_batch, inner.patch_size, inner.channels)
        self.inner, self.name, self.seen = inner, "host-copy", []

    def _infer(self, batch, extra):
        self.seen.append(type(batch).__name__)
        return self.inner.infer(np.ascontiguousarray(batch.copy_to_host()))


vol = generate_phantom(3, params=PhantomParams(n_nodules=1), shape_zyx=(60, 128, 128),
                       spacing_zyx_mm=(3.0, 2.2, 2.2)).volume
host = Detector(backend="onnxruntime-cpu", backend_options={"streams": 1})
dev = Detector(backend="onnxruntime-cpu", backend_options={"streams": 1})
dev.stage2_backend = HostCopy(dev.stage2_backend)
pre = preprocess(vol, host.spec)
c = host.stage1(pre).centres_zyx[:2]
ctx = dev.stage2_scorer.context_volume(pre)
assert isinstance(ctx, DeviceContextVolume), type(ctx)
which = np.arange(len(c))
want = host.stage2_scorer._sums(host.stage2_scorer.context_volume(pre), c, which, 0, 2)  # the first two flips
got = dev.stage2_scorer._sums(ctx, c, which, 0, 2)
assert dev.stage2_backend.seen and all("Array" in t for t in dev.stage2_backend.seen), dev.stage2_backend.seen
print(float(np.abs(want - got).max()))
"""


def test_detector_gathers_stage2_on_the_device_for_a_backend_that_takes_device_arrays():
    """A stage-2 backend that takes device arrays gets device batches (`DeviceContextVolume`,
    mirrored on the device) and the same stage-2 logits as the host path, under the simulator."""
    assert simulated(DETECTOR_CODE) < 1e-4

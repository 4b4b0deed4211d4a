"""The device preprocessing's kernels and its whole path, run on the CPU by numba's CUDA
simulator, each against its host counterpart."""
from __future__ import annotations

from cudasim import simulated

KERNELS = r"""
import numpy as np
from numba import cuda
from noduleflow.engine import lungmask, morphology
from noduleflow.engine.preprocess_cuda import DevicePasses, _launch, _zero_k, extent, resample_device
from noduleflow.engine.resample import crop, resample
from noduleflow.engine.volume import Volume
rng = np.random.default_rng(3)
hu = rng.integers(-1100, 300, (9, 14, 19)).astype(np.int16)   # partial blocks on every axis
d_hu = cuda.to_device(hu)
dev = DevicePasses(d_hu)
f = (2, 3, 4)
bm = dev.block_mean(f)
assert bm.dtype == np.float32 and (bm == morphology.block_mean(hu, f)).all(), "block means differ"
cshape = bm.shape
code = rng.integers(0, 3, (3, 3, 3)).astype(np.uint8)          # a box of blocks from block (1, 2, 1) on
origin = (1, 2, 1)
ref = morphology.refine_blocks(hu, code, f, -500.0, origin_zyx=origin)
got = dev.refine(code, f, -500.0, origin).copy_to_host()
assert ref.any() and (ref == got).all(), "refined masks differ"
cut = rng.random((2, 3, 4)) < 0.5
ref_c = ref.copy()
morphology.clear_blocks(ref_c, cut, f, origin_zyx=(2, 1, 0))
got_c = dev.clear_blocks(cuda.to_device(got), cut, f, (2, 1, 0)).copy_to_host()
assert (ref_c != ref).any() and (ref_c == got_c).all(), "cleared masks differ"
m = rng.random(hu.shape) < 0.04
for box, r in (((2, 7, 3, 11, 4, 15), (1, 2, 3)), ((0, 9, 0, 14, 0, 19), (0, 1, 2)), ((2, 7, 4, 10, 5, 14), (2, 0, 0))):
    inside = np.zeros_like(m)
    inside[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = m[box[0]:box[1], box[2]:box[3], box[4]:box[5]]
    ref_d = lungmask._dilate_in_box(inside.copy(), box, r)
    got_d = dev.dilate_in_box(cuda.to_device(inside), box, r).copy_to_host()
    assert (ref_d != inside).any(), f"box {box}: nothing to dilate"
    assert (ref_d == got_d).all(), f"dilation differs for box {box}, radius {r}"
e = extent(cuda.to_device(m))
zs, ys, xs = (np.flatnonzero(m.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
assert e == (zs[0], zs[-1] + 1, ys[0], ys[-1] + 1, xs[0], xs[-1] + 1), e
assert extent(cuda.to_device(np.zeros((3, 4, 5), np.bool_))) is None
vol = Volume(hu, (1.7, 0.8, 0.65), (0.0, 0.0, 0.0))
bbox = (1, 8, 2, 13, 3, 19)
for order, src in ((1, hu), (0, m)):
    want = resample(crop(vol.with_array(src), bbox), (1.0, 1.0, 1.0), order=order).hu
    got_r, sp = resample_device(cuda.to_device(src), vol.spacing_zyx_mm, bbox, (1.0, 1.0, 1.0), order)
    got_r = got_r.copy_to_host()
    assert got_r.dtype == want.dtype and got_r.shape == want.shape, (got_r.dtype, got_r.shape, want.shape)
    assert (got_r == want).all(), f"order {order}: {np.abs(got_r.astype(float) - want).max()}"
try:
    resample_device(cuda.to_device(m), vol.spacing_zyx_mm, bbox, (1.0, 1.0, 1.0), 1)
    raise SystemExit("trilinear resampling of a mask was accepted")
except Exception as exc:
    assert "use order=0" in str(exc), exc
ones = cuda.to_device(np.ones((4, 5, 6), np.bool_))
_zero_k[_launch(120)](ones.reshape(120))
assert not ones.copy_to_host().any(), "the zero fill left voxels set"
print(0.0)
"""


def test_device_passes_equal_the_host_passes_in_simulator():
    """Block means, the voxel-by-voxel boundary, the airway cut, the dilation in a box, the mask's
    extent, trilinear (int16) and nearest (mask) resampling of a crop: each equal to the host's."""
    assert simulated(KERNELS) == 0.0


WHOLE = r"""
import numpy as np
from noduleflow.engine.lungmask import LungMaskParams
from noduleflow.engine.preprocess import PreprocessSpec, preprocess
from noduleflow.engine.preprocess_cuda import preprocess_device
from noduleflow.engine.volume import Volume
# a small chest: body at 30 HU in air, two lungs at -850 HU with a vessel and a nodule in one,
# at 1.0 x 0.5 x 0.5 mm (the mask's coarse grid: 2 x 4 x 4 blocks)
z, y, x = np.mgrid[:18, :44, :56]
hu = np.full(z.shape, -1000, np.int16)
body = ((y - 22) / 19.0) ** 2 + ((x - 28) / 25.0) ** 2 < 1
hu[body] = 30
for cx in (16, 40):
    hu[body & (((y - 22) / 11.0) ** 2 + ((x - cx) / 8.0) ** 2 + ((z - 9) / 10.0) ** 2 < 1)] = -850
hu[(z >= 4) & (z < 14) & (y == 22) & (x == 16)] = 40                       # a vessel
hu[((y - 18) ** 2 + (x - 42) ** 2 + (z - 9) ** 2) <= 4] = 20               # a nodule
vol = Volume(hu, (1.0, 0.5, 0.5), (-14.0, -11.0, 3.0))
spec = PreprocessSpec(lung=LungMaskParams(dilate_mm=1.0, min_lung_ml=0.05, close_mm=1.0), margin_mm=2.0)
ref = preprocess(vol, spec)
got, d_hu1 = preprocess_device(vol, spec)
assert ref.mask.sum() > 500, ref.mask.sum()
assert got.bbox_native == ref.bbox_native, (got.bbox_native, ref.bbox_native)
assert got.volume.spacing_zyx_mm == ref.volume.spacing_zyx_mm and got.volume.origin_xyz_mm == ref.volume.origin_xyz_mm
assert (got.volume.hu == ref.volume.hu).all() and (d_hu1.copy_to_host() == ref.volume.hu).all()
assert (got.mask == ref.mask).all(), int((got.mask != ref.mask).sum())
assert {"upload", "mask", "resample"} <= set(got.timings_s)
try:
    preprocess_device(vol.with_array(hu.astype(np.float32)), spec)
    raise SystemExit("a float32 volume was accepted")
except Exception as exc:
    assert "int16" in str(exc), exc
print(0.0)
"""


def test_preprocess_on_device_equals_the_host_path_in_simulator():
    """The whole device path (upload, mask with the topology on the host, bounding box, crop and
    resampling) gives the host path's 1 mm volume, mask, box and geometry."""
    assert simulated(WHOLE) == 0.0


def test_detector_preprocesses_on_the_device_when_stage2_runs_there(monkeypatch):
    """A detector whose stage-2 backend takes device arrays (a GPU backend) preprocesses through
    `preprocess_device`, whose timings the detection reports; a host backend does not. (The device
    path's own results are checked under the simulator above; here only the routing, with a
    stand-in that records the call and preprocesses on the host.)"""
    import numpy as np

    from noduleflow import Detector
    from noduleflow.engine import preprocess_cuda
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    calls = []

    def stand_in(vol, spec):
        calls.append(vol.shape)
        pre = preprocess(vol, spec)
        pre.timings_s["upload"] = 0.0
        return pre, None

    monkeypatch.setattr(preprocess_cuda, "preprocess_device", stand_in)
    vol = generate_phantom(2, params=PhantomParams(n_nodules=1), shape_zyx=(60, 128, 128),
                           spacing_zyx_mm=(3.0, 2.2, 2.2)).volume
    with Detector(backend="onnxruntime-cpu") as det:
        assert not det.preprocess_on_device  # a CPU stage-2 backend
        host = det.detect(vol)
        assert not calls and "upload" not in host.timings_s
        det.preprocess_on_device = True
        dev = det.detect(vol)
    assert calls == [vol.shape] and "upload" in dev.timings_s and host.candidates
    assert [c.center_xyz_mm for c in dev.candidates] == [c.center_xyz_mm for c in host.candidates]
    assert np.isfinite(dev.timings_s["total"])

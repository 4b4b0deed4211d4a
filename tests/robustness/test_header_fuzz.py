"""Seeded, bounded header fuzz of the phantom's DICOM series.

Each seed draws 1-3 mutations of header elements (values from a pool of nasty ones:
0, -1, 1e30, NaN, text, too many or too few values, wrong lengths) or of raw header
bytes (overwritten bytes, unknown VRs, broken lengths, a cut-off header) in one, some or
all slices, then loads the folder through `load_volume`. The outcome must be a `Volume`
that satisfies the invariants in `corrupt.check_volume`, or one `VolumeError`; anything
else (a traceback, a hang past the timeout) fails the case. Pixel data is never touched,
so each case costs one copy and one header-only load.
"""
from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from noduleflow.engine import Volume

from .corrupt import edit, outcome, phantom, raw, series

# pydicom warns (UserWarning) about every invalid value it reads; here they are the point
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

N_SEEDS = 240

_TEXT = [b"0", b"-1", b"1e30", b"-1e30", b"nan", b"inf", b"abc", b"1\\2", b"1\\2\\3", b"1\\0\\0\\0\\1\\0\\0",
         b"", b" ", b"\x00\x01", b"65535", b"-2.5", b"0.0001", b"9" * 64, b"0.5\\1\\0\\0\\1\\0", b"1e-30"]
_US = [struct.pack("<H", v) for v in (0, 1, 2, 8, 12, 16, 17, 32, 255, 65535)] + [b"\x01", b"\x01\x02\x03", b""]
_STR = [b"", b"CT", b"MR", b"\xff\xfe\xfd", b"A" * 70, b"1.2.3", b"ORIGINAL\\PRIMARY\\LOCALIZER", b"\\\\\\"]
ELEMENTS = {  # keyword -> (VR, value pool)
    **{k: ("DS", _TEXT) for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                                  "SliceThickness", "RescaleSlope", "RescaleIntercept", "SpacingBetweenSlices",
                                  "SliceLocation")},
    **{k: ("IS", _TEXT) for k in ("NumberOfFrames", "InstanceNumber")},
    **{k: ("US", _US) for k in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                                "PixelRepresentation", "SamplesPerPixel")},
    "SeriesInstanceUID": ("UI", _STR), "SOPClassUID": ("UI", _STR), "Modality": ("CS", _STR),
    "ImageType": ("CS", _STR), "PhotometricInterpretation": ("CS", _STR),
}
_ODD_VRS = ["US", "UL", "FD", "DS", "OB", "UN", "SQ", "AT"]


def _element_mutation(rng: random.Random):
    keyword = rng.choice(sorted(ELEMENTS))
    vr, pool = ELEMENTS[keyword]
    kind = rng.random()
    if kind < 0.1:
        return f"del {keyword}", lambda ds: delattr(ds, keyword) if keyword in ds else None
    if kind < 0.2:  # the right bytes under a wrong VR (BytesLengthException and friends)
        odd = rng.choice(_ODD_VRS)
        value = rng.choice(pool)
        return f"{keyword} as {odd}={value[:12]!r}", lambda ds: raw(ds, keyword, value, odd)
    value = rng.choice(pool)
    return f"{keyword}={value[:12]!r}", lambda ds: raw(ds, keyword, value, vr)


def _byte_mutation(rng: random.Random):
    """Raw edits inside the header (after the preamble, before PixelData)."""
    kind = rng.choice(["overwrite", "vr", "length", "cut"])
    seed = rng.randrange(1 << 30)

    def mutate(path):
        r = random.Random(seed)
        data = bytearray(path.read_bytes())
        end = data.find(b"\xe0\x7f\x10\x00", 132)
        end = end if end > 140 else len(data)
        if kind == "overwrite":
            for _ in range(r.randint(1, 8)):
                data[r.randrange(132, end)] = r.randrange(256)
        elif kind in ("vr", "length"):
            tags = [i for i in range(132, end - 8)
                    if data[i + 1] in (0x00, 0x08, 0x20, 0x28) and data[i] in (0x08, 0x20, 0x28)
                    and chr(data[i + 4]).isupper() and chr(data[i + 5]).isupper()]
            if tags:
                i = r.choice(tags)
                if kind == "vr":
                    data[i + 4:i + 6] = bytes(r.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(2))
                else:
                    data[i + 6:i + 8] = struct.pack("<H", r.choice([0, 1, 3, 255, 4096, 65535]))
        else:
            del data[r.randrange(132, end):]
        path.write_bytes(bytes(data))
    return f"bytes:{kind}", mutate


def _targets(rng: random.Random, n: int) -> list[int]:
    pick = rng.random()
    if pick < 0.4:
        return [rng.randrange(n)]
    if pick < 0.7:
        return sorted(rng.sample(range(n), rng.randint(2, 5)))
    return list(range(n))


def _check_against_phantom(vol: Volume, mutated: set[int], done: list[str]) -> None:
    """Slices from untouched files are the phantom's; a lost slice is never silent."""
    ref = phantom()
    z_ref = ref.voxel_to_world([[k, 0, 0] for k in range(ref.shape[0])])[:, 2]
    z_vol = vol.voxel_to_world([[j, 0, 0] for j in range(vol.shape[0])])[:, 2]
    for j, z in enumerate(z_vol):
        k = int(np.argmin(np.abs(z_ref - z)))
        if abs(z_ref[k] - z) < 0.01 and k not in mutated and vol.shape[1:] == ref.shape[1:]:
            np.testing.assert_array_equal(vol.hu[j], ref.hu[k], err_msg=f"slice {k}: {done}")
    if vol.shape[0] < ref.shape[0]:
        assert vol.meta["warnings"], f"{ref.shape[0] - vol.shape[0]} slice(s) dropped silently: {done}"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("seed", range(N_SEEDS))
def test_header_fuzz(tmp_path, master_root, seed):
    rng = random.Random(seed)
    paths = series(tmp_path, master_root)
    plan = []
    for _ in range(rng.randint(1, 3)):
        targets = _targets(rng, len(paths))
        by_element = rng.random() < 0.6
        plan.append((not by_element, targets, *(_element_mutation(rng) if by_element else _byte_mutation(rng))))
    done, mutated = [], set()
    # element edits go through pydicom, so they come before raw byte damage it could not re-read
    for raw_bytes, targets, label, fn in sorted(plan, key=lambda m: m[0]):
        mutated.update(targets)
        which = [paths[i] for i in targets]
        if raw_bytes:
            for p in which:
                fn(p)
        else:
            edit(which, fn)
        done.append(f"{label} on slice(s) {targets}")
    result = outcome(tmp_path / "s", workers=2)
    if isinstance(result, Volume):
        _check_against_phantom(result, mutated, done)

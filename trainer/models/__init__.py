"""The seed's model zoo (seeds/000): 3D-1, 3D-2, 3D-LOC, 2.5D-1, 2.5D-2, 3D-ST; and 3D-E, a plain
network with 3D-1's dense contract laid out for the dense pass's speed (`net3d.Net3DE`).

All but the stage-2 ``ms-3d1`` ((N, 2, 41, 41, 41): 1 mm and 2 mm context) take (N, 1, 41, 41, 41)
float32 patches in [0, 1] (1 mm voxels, HU window [-1000, 400]) and return (N,) logits. 3D-1, 3D-2,
3D-LOC and 3D-E are exactly fully convolutional (`dense_forward`); see `trainer.models.net3d`.
"""
from __future__ import annotations

MODEL_NAMES = ("3d-1", "3d-2", "3d-loc", "3d-e", "2.5d-1", "2.5d-2", "3d-st")
STAGE2_MODELS = ("ms-3d1",)  # (N, 2, 41, 41, 41) multi-scale context input
DENSE_MODELS = ("3d-1", "3d-2", "3d-loc", "3d-e")


def build_model(name: str, **kwargs):
    from noduleflow.engine import ConfigError

    from .net3d import Net3D, Net3DST
    from .net25d import Net25D1, Net25D2

    name = name.lower()
    if name == "3d-1":
        return Net3D("3d-1", **kwargs)
    if name == "3d-2":
        return Net3D("3d-2", **kwargs)
    if name == "3d-e":
        from .net3d import Net3DE

        return Net3DE(**kwargs)
    if name == "3d-loc":
        return Net3D("3d-1", loc=True, **kwargs)
    if name == "2.5d-1":
        return Net25D1(**kwargs)
    if name == "2.5d-2":
        return Net25D2(**kwargs)
    if name == "3d-st":
        return Net3DST(**kwargs)
    if name == "ms-3d1":  # stage 2: two 3D-1 trunks on 1 mm and 2 mm context (trainer.models.stage2)
        from .stage2 import build_stage2

        return build_stage2("3d-1", **kwargs)
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES + STAGE2_MODELS)}")


def uses_location(name: str) -> bool:
    return name.lower() == "3d-loc"

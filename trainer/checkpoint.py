"""Checkpoints: safetensors weights + a JSON config (no pickle; loading reads weights only)."""
from __future__ import annotations

import json
from pathlib import Path

from noduleflow.engine import ConfigError

# the checkpoints the shipped package (engine/models/default) was exported from
SHIPPED_STAGE1 = "stage1_3de"   # patch.onnx, dense.onnx: 3D-E distilled from 3D-1 v6 (stage1_3d1_v6)
SHIPPED_STAGE2 = "stage2"    # stage2.onnx


def shipped_checkpoint(stage: int = 1) -> Path:
    """The PyTorch checkpoint of the shipped package's stage-1 CNN (``stage=1``) or stage 2, in this
    trainer's folder (a source tree or the installed package's data)."""
    if stage not in (1, 2):
        raise ConfigError(f"stage must be 1 or 2, got {stage!r}")
    name = SHIPPED_STAGE1 if stage == 1 else SHIPPED_STAGE2
    return Path(__file__).resolve().parent / "checkpoints" / name / "best.safetensors"


def _files(path) -> tuple[Path, Path]:
    """(weights, JSON config) of a checkpoint given as its .safetensors file or its folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    return p, p.with_suffix(".json")


def read_config(path) -> dict:
    """A checkpoint's JSON config (model name, kwargs, training settings) without loading weights or torch."""
    _, cfg_path = _files(path)
    if not cfg_path.is_file():
        raise ConfigError(f"checkpoint needs {cfg_path.name} in {cfg_path.parent}")
    return json.loads(cfg_path.read_text())


def save_checkpoint(out_dir, model, config: dict, name: str = "model") -> Path:
    """Write ``name.safetensors`` and ``name.json`` (model name, kwargs, preprocessing, metrics)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{name}.safetensors"))
    (out / f"{name}.json").write_text(json.dumps(config, indent=2))
    return out / f"{name}.safetensors"


def load_checkpoint(path):
    """-> (model in eval mode, config dict). ``path``: the .safetensors file or its folder."""
    from safetensors.torch import load_file

    from .models import build_model

    p, cfg_path = _files(path)
    if not p.exists() or not cfg_path.exists():
        raise ConfigError(f"checkpoint needs {p.name} and {cfg_path.name} in {p.parent}")
    config = read_config(p)
    model = build_model(config["model"], **config.get("model_kwargs", {}))
    model.load_state_dict(load_file(str(p)))
    return model.eval(), config

"""`noduleflow export CHECKPOINT OUT_DIR`."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to a model package (patch.onnx, dense.onnx, manifest)",
        description="Export a trained checkpoint (best.safetensors + best.json) to a model package: "
                    "patch.onnx (dynamic batch), dense.onnx (3-D models: fully convolutional, dynamic "
                    "D/H/W), manifest.json with sha256 of every file. ONNX Runtime is checked against "
                    "PyTorch (max |logit diff| <= 1e-4) and dense against patch at every grid point.")
    p.add_argument("checkpoint", help="checkpoint .safetensors (its .json beside it) or its folder")
    p.add_argument("out", help="package folder to write")
    p.add_argument("--model-id", help="model id written in the manifest")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--slim", action=argparse.BooleanOptionalAction, default=True,
                   help="clean the graphs up with onnxslim before the parity checks (default: on; "
                        "fewer nodes, identical logits)")
    p.add_argument("--fp16", action="store_true",
                   help="also write patch_fp16.onnx (and dense_fp16.onnx): fp16 weights and activations, "
                        "fp32 inputs/outputs; their error against fp32 on phantom patches is printed and "
                        "recorded in the manifest (needs onnxconverter-common)")
    p.add_argument("--int8", action="store_true",
                   help="also write stage2_int8.onnx (with --stage2; else patch_int8.onnx): ONNX Runtime's static "
                        "quantization (QDQ, per-channel int8 weights), calibrated on phantom patches; run by "
                        "`detect --precision int8`. Its error against fp32 is printed and recorded in the manifest")
    p.add_argument("--stage2", metavar="CHECKPOINT",
                   help="a stage-2 checkpoint (python -m noduleflow.trainer.stage2_train): written as stage2.onnx "
                        "(checked against PyTorch) and declared in the contract, making a two-stage package "
                        "whose detection is stage 1 + stage 2")
    p.add_argument("--stage2-spec", metavar="JSON",
                   help="with --stage2: a JSON file of the contract's stage settings, {\"stage1\": {...}, "
                        "\"stage2\": {...}} (engine.contract.Stage1Spec: generator, max_candidates, the blob "
                        "passes; Stage2Spec: tta_flips, calibration_scale, calibration_bias, ...), e.g. the one "
                        "python -m noduleflow.trainer.stage2_calibrate writes (a flat object of both is read too); "
                        "default: their defaults. An optional \"preprocess\" block (engine.preprocess.PreprocessSpec) "
                        "replaces the checkpoint's preprocessing: the one stage 2 was trained on")
    p.add_argument("--tensorrt", choices=("fp32", "fp16", "int8"),
                   help="also build TensorRT plans for this GPU into OUT/trt/ (needs tensorrt; unverified)")
    p.add_argument("--torch-compiled", action="store_true",
                   help="also write AOTInductor packages (patch.pt2; stage2.pt2 with --stage2) for the "
                        "torch-compiled backend, compiled for the GPU when PyTorch sees one, else the CPU")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from noduleflow.engine.extras import require_extra

    require_extra("export", "noduleflow export")
    from noduleflow.export.package import export_package

    spec = (None, None)
    preprocess = None
    if args.stage2_spec:
        import json

        from noduleflow.engine import ConfigError
        from noduleflow.engine.contract import split_stage_settings

        if not args.stage2:
            raise ConfigError("--stage2-spec needs --stage2")
        try:
            raw = json.loads(Path(args.stage2_spec).read_text())
            spec = split_stage_settings(raw)
            if isinstance(raw, dict) and raw.get("preprocess") is not None:
                from noduleflow.engine.preprocess import PreprocessSpec

                preprocess = PreprocessSpec.from_dict(raw["preprocess"])
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"--stage2-spec {args.stage2_spec}: {exc}") from None

    report = export_package(args.checkpoint, args.out, model_id=args.model_id, overwrite=args.overwrite,
                            fp16=args.fp16, slim=args.slim, torch_compiled=args.torch_compiled, stage2=args.stage2,
                            stage1_spec=spec[0], stage2_spec=spec[1], int8=args.int8, preprocess=preprocess)
    if args.tensorrt:
        from noduleflow.export.tensorrt_build import build_plan

        for graph in ("patch", "dense", "stage2"):
            if (Path(args.out) / f"{graph}.onnx").exists():
                print(f"wrote {build_plan(args.out, graph, args.tensorrt)}")
    for k, v in report.items():
        print(f"{k}: {v:.2e}" if isinstance(v, float) else f"{k}: {v}")
    print(f"wrote package {args.out}")
    return 0

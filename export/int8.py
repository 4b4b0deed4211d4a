"""INT8 graphs of a package: ONNX Runtime's static quantization, calibrated on phantom patches.

``{graph}_int8.onnx`` beside ``{graph}.onnx``: per-channel int8 weights, uint8 activations, in
ONNX's QDQ form (QuantizeLinear/DequantizeLinear pairs around each convolution), which both CPU
backends read: OpenVINO's CPU plugin runs the quantized convolutions as int8 kernels (faster than
fp32 on stage 2's graph: `noduleflow bench speed` measures it), ONNX Runtime's CPU provider runs them
too (slower there than fp32 on CPUs without VNNI). Calibration: context patches (stage 2) or
patches (patch graph) of one phantom in no evaluation cohort, at its blob candidates (what stage 2
scores) topped up with random lung points. The engine runs an INT8 graph only when asked
(``--precision int8``): the default stays fp32, whose scores do not depend on the backend.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from noduleflow.engine.errors import ConfigError
from noduleflow.engine.postprocess import sigmoid

GRAPHS = ("stage2", "patch")
CALIBRATION_SEED = 21  # a phantom in no training, validation or evaluation cohort


def calibration_patches(contract, graph: str = "stage2", n_cal: int = 256, n_test: int = 64,
                        seed: int = CALIBRATION_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, test) inputs of ``graph`` from phantom ``seed``: at its blob candidates
    (`engine.blobs.detect_blobs`, strongest first; stage 2 only) topped up with random lung points,
    in a random order; the test set (for the error report) shares no patch with the calibration."""
    from noduleflow.engine.blobs import detect_blobs
    from noduleflow.engine.context import ContextVolume
    from noduleflow.engine.patches import Normalisation, gather
    from noduleflow.engine.preprocess import preprocess
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    if graph not in GRAPHS:
        raise ConfigError(f"INT8 graphs are made for {', '.join(GRAPHS)}, not {graph!r}")
    ph = generate_phantom(seed, params=PhantomParams(n_nodules=3), shape_zyx=(100, 256, 256),
                          spacing_zyx_mm=(2.5, 1.4, 1.4))
    pre = preprocess(ph.volume, contract.preprocess)
    rng = np.random.default_rng(0)
    pts = np.argwhere(pre.mask)
    n = n_cal + n_test
    norm = Normalisation(*contract.hu_window, pad_hu=contract.pad_hu)
    if graph == "stage2":
        cand = np.rint(detect_blobs(pre.volume.hu, pre.mask).centres_zyx).astype(np.int64)[:n // 2]
        pick = np.concatenate([cand, pts[rng.choice(len(pts), n - len(cand), replace=False)]])
        cut = ContextVolume(pre.volume.hu, norm, contract.patch_size, contract.stage2.channels).patches(pick)
    else:
        pick = pts[rng.choice(len(pts), n, replace=False)]
        cut = gather(pre.volume.hu, pick, norm=norm, size=contract.patch_size)
    cut = np.ascontiguousarray(cut[rng.permutation(len(cut))], dtype=np.float32)
    return cut[:n_cal], cut[n_cal:]


def quantize(src: Path, dst: Path, calibration: np.ndarray, fmt: str = "QDQ", batch: int = 32) -> Path:
    """``src`` (an fp32 ONNX graph with one input) quantized to ``dst`` by ONNX Runtime's
    `quantize_static` (after its `quant_pre_process`: shape inference and graph cleanup), MinMax
    calibration on ``calibration`` in batches of ``batch``; ``fmt``: "QDQ" or "QOperator"."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory(prefix="noduleflow-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(dst), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(dst)


def int8_error(fp32_path: Path, int8_path: Path, x: np.ndarray) -> dict:
    """max |logit| and max |sigmoid probability| difference, INT8 graph vs fp32 graph, on ``x``
    (ONNX Runtime CPU)."""
    import onnxruntime as ort

    ys = []
    for p in (fp32_path, int8_path):
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        ys.append(s.run(None, {s.get_inputs()[0].name: x})[0].astype(np.float64).reshape(-1))
    prob = [sigmoid(y) for y in ys]
    return {"max_abs_logit_diff": float(np.abs(ys[1] - ys[0]).max()),
            "max_abs_prob_diff": float(np.abs(prob[1] - prob[0]).max())}


def write_int8_graphs(out: Path, contract, graphs=("stage2",)) -> dict:
    """Write ``{graph}_int8.onnx`` beside each of ``graphs`` present in the package folder ``out``
    -> their calibration and errors against fp32 (for the manifest's ``export["int8"]``)."""
    import onnx

    report = {"method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations, MinMax",
              "calibration": f"phantom seed {CALIBRATION_SEED}: blob candidates + random lung points"}
    for g in graphs:
        src = Path(out) / f"{g}.onnx"
        if not src.exists():
            continue
        cal, test = calibration_patches(contract, g)
        dst = quantize(src, Path(out) / f"{g}_int8.onnx", cal)
        m, meta = onnx.load(str(dst)), onnx.load(str(src), load_external_data=False).metadata_props
        have = {p.key for p in m.metadata_props}
        for p in meta:  # the fp32 graph's contract metadata, so the INT8 graph found alone says it too
            if p.key not in have:
                m.metadata_props.add(key=p.key, value=p.value)
        onnx.save(m, str(dst))
        onnx.checker.check_model(str(dst))
        report[f"{g}_calibration_patches"] = len(cal)
        report.update({f"{g}_int8_{k}": v for k, v in int8_error(src, dst, test).items()})
    return report

"""edgekit pack vs the plain quantizers it wraps, on the same models, in the same run.

    python tools/bench/pack_vs_raw.py [--out tools/bench/results/pack_vs_raw.json]

For each model: the float model, plain `onnxruntime.quantization.quantize_static` with its
defaults (ONNX) or plain ai-edge-quantizer `static_wi8_ai8` (TFLite), edgekit's `static_int8`
recipe (like for like: same runtime), and edgekit's own choice for the CPU target (which may
run the model in LiteRT instead of ONNX Runtime when that measured faster). Each row: file size,
SQNR vs float, accuracy (when labels exist), p50 latency ratio vs float (interleaved in one
loop), and the time to produce it. Latency is quoted as a ratio: the host is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgekit.dataset import Dataset, load_dataset, load_labels, synthetic_dataset  # noqa: E402
from edgekit.examples import get_example  # noqa: E402
from edgekit.packer import PackOptions, pack  # noqa: E402
from edgekit.packer.evaluate import accuracy, interleaved_latency, make_runner, run_all, sqnr_db  # noqa: E402
from edgekit.ui import table  # noqa: E402


def raw_ort_static(model: bytes, calib: Dataset) -> bytes:
    from onnxruntime.quantization import quantize_static

    class Reader:
        def __init__(self):
            self.it = iter(calib.feeds())

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(model)
        quantize_static(src, dst, Reader())  # library defaults: QDQ, per-tensor, MinMax
        return dst.read_bytes()


def raw_aeq_static(model: bytes, calib: Dataset) -> bytes:
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(model)
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    result = qt.calibrate({"serving_default": calib.feeds()})
    return bytes(qt.quantize(result).quantized_model)


def measure(name: str, model: bytes, fmt: str, seconds: float, float_model: bytes,
            float_fmt: str, evald: Dataset, labels: np.ndarray | None) -> dict:
    """Against the float model as given, in its own runtime (edgekit may pick another one)."""
    ref = make_runner(float_model, float_fmt)
    cand = make_runner(model, fmt)
    ref_out, out = run_all(ref, evald), run_all(cand, evald)
    lat = interleaved_latency(cand, ref, evald.sample(0), min_runs=200, min_seconds=1.0)
    row = {"variant": name, "format": fmt, "size_bytes": len(model),
           "size_ratio": round(len(model) / len(float_model), 4),
           "sqnr_db": round(min(sqnr_db(r, o) for r, o in zip(ref_out, out, strict=True)), 2),
           "latency_ratio": round(lat.ratio, 3), "seconds": round(seconds, 2)}
    if labels is not None:
        row["accuracy"] = round(accuracy(out[0], labels), 4)
        row["accuracy_drop"] = round(accuracy(ref_out[0], labels) - row["accuracy"], 4)
    return row


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def bench_model(label: str, path: Path, fmt: str, calib_path: Path | None, eval_path: Path | None,
                labels_path: Path | None, tmp: Path) -> list[dict]:
    float_model = path.read_bytes()
    ref = make_runner(float_model, fmt)
    if calib_path:
        calib = load_dataset(calib_path, ref.inputs)
        evald = load_dataset(eval_path, ref.inputs)
    else:
        calib, evald = synthetic_dataset(ref.inputs, 64), synthetic_dataset(ref.inputs, 32, seed=1)
    labels = load_labels(labels_path, len(evald)) if labels_path else None
    rows = [measure("float", float_model, fmt, 0.0, float_model, fmt, evald, labels)]
    raw_fn, raw_name = (raw_ort_static, "raw onnxruntime quantize_static") if fmt == "onnx" else (
        raw_aeq_static, "raw ai-edge-quantizer static_wi8_ai8")
    raw, secs = timed(raw_fn, float_model, calib)
    rows.append(measure(raw_name, raw, fmt, secs, float_model, fmt, evald, labels))
    same_runtime = "onnxruntime" if fmt == "onnx" else "auto"
    for recipe, runtime, name in (("static_int8", same_runtime, "edgekit static_int8"),
                                  (None, "auto", "edgekit choice (rpi4)")):
        opts = PackOptions(model=path, target="rpi4", out=tmp / f"{label}-{recipe}.ekb",
                           calib=calib_path, eval_data=eval_path, labels=labels_path, recipe=recipe,
                           synthetic_calib=calib_path is None, runtime=runtime)
        result, secs = timed(pack, opts)
        chosen = result.chosen[0]
        row = measure(f"{name}: {chosen.recipe.name}", chosen.shipped, chosen.format, secs,
                      float_model, fmt, evald, labels)
        row["bundle_bytes"] = opts.out.stat().st_size if isinstance(opts.out, Path) else None
        rows.append(row)
    for r in rows:
        r["model"] = label
    return rows


def mobile_cnn_onnx(path: Path) -> None:
    """A MobileNet-style block stack (random weights) for a second, larger data point."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, ch = [], [], "x", 3
    for i, (out_ch, stride) in enumerate([(16, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)]):
        inits += [
            numpy_helper.from_array(
                rng.normal(0, (2 / (9 * ch)) ** 0.5, (ch, 1, 3, 3)).astype(np.float32), f"dw{i}"
            ),
            numpy_helper.from_array(
                rng.normal(0, (2 / ch) ** 0.5, (out_ch, ch, 1, 1)).astype(np.float32), f"pw{i}"
            ),
        ]
        nodes += [helper.make_node("Conv", [prev, f"dw{i}"], [f"d{i}"], group=ch, pads=[1, 1, 1, 1],
                                   strides=[stride, stride]),
                  helper.make_node("Relu", [f"d{i}"], [f"dr{i}"]),
                  helper.make_node("Conv", [f"dr{i}", f"pw{i}"], [f"p{i}"]),
                  helper.make_node("Relu", [f"p{i}"], [f"pr{i}"])]
        prev, ch = f"pr{i}", out_ch
    inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (10, ch)).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mobile",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [1, 3, 96, 96])],
                              [helper.make_tensor_value_info("y",
                                                             TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path,
                    default=REPO / "tools" / "bench" / "results" / "pack_vs_raw.json")
    args = ap.parse_args()
    ex = get_example("digits")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mobile_cnn_onnx(tmp / "mobile.onnx")
        for label, path, fmt, calib, eval_data, labels in (
                ("digits-onnx", ex.onnx, "onnx", ex.calib, ex.eval, ex.labels),
                ("digits-tflite", ex.tflite, "tflite", ex.calib, ex.eval, ex.labels),
                ("mobile-cnn-onnx", tmp / "mobile.onnx", "onnx", None, None, None)):
            rows += bench_model(label, path, fmt, calib, eval_data, labels, tmp)
            print(json.dumps(rows[-1]), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))

    cols = ["model", "variant", "format", "size_ratio", "sqnr_db", "accuracy_drop", "latency_ratio",
            "seconds"]
    print(table(cols, [[r.get(c) for c in cols] for r in rows]))
    print(json.dumps({"results": str(args.out), "rows": len(rows)}))


if __name__ == "__main__":
    main()

"""Real pretrained models through `edgekit pack`, beside the plain tools, same data.

    python tools/bench/real_models.py --cache ~/.cache/edgekit-bench --out results/real_models

Models come from wheels in the package registry (``pip download`` at bench time, into
``--cache``; the model files are read out of the wheel with zipfile, nothing is imported):
MediaPipe 0.10.14 (face detector, selfie segmentation, face landmarks: fp16-stored TFLite
without signatures) and RapidOCR 1.4.4 (PaddleOCR direction classifier and text detector:
ONNX with dynamic dims). Calibration (32) and evaluation (8) inputs are made offline: crops
of scikit-learn's bundled sample photos, and text lines rendered with PIL for OCR.

For every model x target (rpi4, coral-usb, ethos-u55-128, stm32h7) the packer runs with the
fidelity floor ``--floor``; a refusal is recorded with its first line. Anchors, measured on
the same evaluation data against the same float outputs: plain ai-edge-quantizer static int8
(after the doctor's repairs, which it needs to run at all) and, for ONNX, plain ONNX Runtime
``quantize_static`` (QDQ, per channel, min-max). Output: JSON + a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WHEELS = {"mediapipe": "mediapipe==0.10.14", "rapidocr": "rapidocr-onnxruntime==1.4.4"}
TARGETS = ("rpi4", "coral-usb", "ethos-u55-128", "stm32h7")
N_CALIB, N_EVAL = 32, 8


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    wheel: str
    member: str
    layout: str  # "nhwc" or "nchw"
    size: tuple[int, int]  # (height, width)
    scale: tuple[float, float]  # x * a + b on [0, 1] pixels
    data: str  # "photo" or "text"
    input_shape: str = ""  # "NAME:D0,D1,..." for a dynamic input


MODELS = (
    Spec("face_detector", "detection", "mediapipe",
         "mediapipe/modules/face_detection/face_detection_short_range.tflite", "nhwc",
         (128, 128), (2.0, -1.0), "photo"),
    Spec("selfie_segmentation", "segmentation", "mediapipe",
         "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite", "nhwc",
         (256, 256), (1.0, 0.0), "photo"),
    Spec("face_landmarks", "landmarks", "mediapipe",
         "mediapipe/modules/face_landmark/face_landmark.tflite", "nhwc", (192, 192),
         (1.0, 0.0), "photo"),
    Spec("ocr_direction_cls", "classification", "rapidocr",
         "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "nchw", (48, 192),
         (2.0, -1.0), "text"),
    Spec("ocr_text_det", "ocr", "rapidocr",
         "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "nchw", (320, 320),
         (2.0, -1.0), "text", "x:1,3,320,320"),
)


# --- models ------------------------------------------------------------------------------------

def fetch_models(cache: Path) -> dict[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for spec in MODELS:
        wheel = _wheel(cache, spec.wheel)
        dest = cache / "models" / Path(spec.member).name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as z:
                dest.write_bytes(z.read(spec.member))
        out[spec.name] = dest
    return out


def _wheel(cache: Path, key: str) -> Path:
    dist = WHEELS[key].split("==")[0].replace("-", "_")
    found = sorted(cache.glob(f"{dist}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(cache), WHEELS[key]], check=True)
        found = sorted(cache.glob(f"{dist}-*.whl"))
    return found[0]


# --- data ----------------------------------------------------------------------------------------

def make_data(spec: Spec, n: int, seed: int) -> np.ndarray:
    """(n, *input shape without batch) float32 inputs for the model."""
    rgb = _photos(spec.size, n, seed) if spec.data == "photo" else _text(spec.size, n, seed)
    x = rgb * spec.scale[0] + spec.scale[1]
    if spec.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x[:, None].astype(np.float32))


def _photos(size: tuple[int, int], n: int, seed: int) -> np.ndarray:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(rng.integers(min(img.shape[:2]) // 3, min(img.shape[:2])))
        y0 = int(rng.integers(0, img.shape[0] - side + 1))
        x0 = int(rng.integers(0, img.shape[1] - side + 1))
        crop = Image.fromarray(img[y0:y0 + side, x0:x0 + side]).resize(size[::-1])
        out.append(np.asarray(crop, np.float32) / 255.0)
    return np.stack(out)


def _text(size: tuple[int, int], n: int, seed: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    words = ["edgekit", "invoice 2026", "TOTAL 42.10", "hello world", "Route 66", "OCR test",
             "quantize", "Raspberry", "coral", "ethos-u55"]
    out = []
    for _ in range(n):
        bg = tuple(int(v) for v in rng.integers(180, 256, 3))
        img = Image.new("RGB", size[::-1], bg)
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default(size=max(10, size[0] // (2 if size[0] < 100 else 8)))
        lines = 1 if size[0] < 100 else int(rng.integers(3, 7))
        for k in range(lines):
            text = " ".join(rng.choice(words, 2))
            y = (k * size[0] // max(lines, 1)) + int(rng.integers(0, 6))
            fg = tuple(int(v) for v in rng.integers(0, 90, 3))
            draw.text((int(rng.integers(0, 20)), y), text, fill=fg, font=font)
        arr = np.asarray(img, np.float32) / 255.0
        if rng.random() < 0.5 and size[0] < 100:
            arr = arr[::-1, ::-1]  # upside-down lines: the direction classifier's other class
        out.append(arr)
    return np.stack(out)


# --- anchors -------------------------------------------------------------------------------------

def sqnr(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    dbs = []
    for r, t in zip(ref, out, strict=True):
        r, t = r.astype(np.float64), t.astype(np.float64)
        noise = float(np.sum((r - t) ** 2))
        dbs.append(float("inf") if noise == 0 else 10 * np.log10(max(np.sum(r ** 2), 1e-30) / noise))
    return min(dbs)


def run_model(model: bytes, fmt: str, data: np.ndarray) -> list[np.ndarray]:
    from edgekit_agent.runtime import Runner, load_backend

    runner = Runner(load_backend(model, fmt))
    outs = [runner([x]) for x in data]
    return [np.concatenate([o[j] for o in outs]) for j in range(len(runner.outputs))]


def anchor_aeq(model: bytes, calib: np.ndarray, evals: np.ndarray) -> dict:
    """Plain ai-edge-quantizer static int8 (full integer I/O) after the doctor's repairs."""
    from edgekit.packer import doctor_tflite as d
    from edgekit.packer.quantize_tflite import quantize_tflite
    from edgekit.tflite import model as tm

    repaired = model
    for step in (d.normalise_opcodes, d.rewrite_transpose_conv_bias, d.decompose_fp16_weights,
                 d.ensure_signature):
        repaired, _ = step(repaired)
    name = next(iter(tm.signature_io(tm.load(repaired))[1]))
    q = quantize_tflite(repaired, "static_int8", [{name: x} for x in calib])
    ref = run_model(repaired, "tflite", evals)
    return {"sqnr_db": round(sqnr(ref, run_model(q, "tflite", evals)), 2), "size_bytes": len(q)}


def anchor_ort(model: bytes, calib: np.ndarray, evals: np.ndarray, input_shape: str) -> dict:
    """Plain ONNX Runtime quantize_static: QDQ, per channel, min-max."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edgekit.packer import doctor_onnx

    shapes = {}
    if input_shape:
        name, dims = input_shape.split(":")
        shapes[name] = tuple(int(v) for v in dims.split(","))
    fixed, _ = doctor_onnx.freeze_input_shapes(model, shapes, 1)
    import onnx

    inp = onnx.load_from_string(fixed).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{inp: x} for x in calib])

        def get_next(self):  # noqa: ANN201 - ORT's interface
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(fixed)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True)
        q = dst.read_bytes()
    ref = run_model(fixed, "onnx", evals)
    return {"sqnr_db": round(sqnr(ref, run_model(q, "onnx", evals)), 2), "size_bytes": len(q)}


# --- edgekit -------------------------------------------------------------------------------------

def pack_one(path: Path, spec: Spec, target: str, data_dir: Path, floor: float) -> dict:
    import edgekit

    opts = {"calib": data_dir / "calib.npy", "eval_data": data_dir / "eval.npy",
            "min_sqnr": floor}
    if spec.input_shape:
        name, dims = spec.input_shape.split(":")
        opts["input_shapes"] = {name: tuple(int(v) for v in dims.split(","))}
    t0 = time.time()
    out = data_dir / f"{target}.ekb"
    try:
        result = edgekit.pack(str(path), target, out, **opts)
    except Exception as exc:  # a refusal (BudgetError) or a failure: record the first line
        lines = str(exc).splitlines()
        return {"status": "refused" if "no recipe fits" in str(exc) else "error",
                "message": lines[0] if lines else type(exc).__name__,
                "details": [ln for ln in lines if not ln.startswith(("recipe ", "---"))][-3:],
                "best_full_int": _best_full_int(str(exc)), "seconds": round(time.time() - t0)}
    c = result.chosen[0]
    lat = result.manifest.primary.latency_ms
    return {"status": "packed", "recipe": c.recipe.name, "sqnr_db": round(c.fidelity.min_sqnr_db, 2),
            "size_bytes": len(c.shipped), "size_ratio": round(len(c.shipped) / path.stat().st_size, 3),
            "latency_ms": lat, "latency_source": "measured-host",
            "candidates": {x.recipe.name: (round(x.fidelity.min_sqnr_db, 2) if x.fidelity else None)
                           for x in result.candidates},
            "seconds": round(time.time() - t0)}


def _best_full_int(text: str) -> float | None:
    marker = "full integer reaches at best "
    if marker not in text:
        return None
    return float(text.split(marker)[1].split(" dB")[0])


def anchors(path: Path, spec: Spec, calib: np.ndarray, evals: np.ndarray) -> dict:
    model = path.read_bytes()
    if path.suffix == ".tflite":
        name, fn = "aeq_static_int8", lambda: anchor_aeq(model, calib, evals)
    else:
        name, fn = "ort_quantize_static_per_channel", lambda: anchor_ort(
            model, calib, evals, spec.input_shape)
    try:
        return {name: fn()}
    except Exception as exc:  # an anchor that fails is a result too
        return {name: {"error": str(exc).splitlines()[0][:200]}}


# --- main ----------------------------------------------------------------------------------------

def bench(cache: Path, out: Path, floor: float, models: list[str], targets: list[str]) -> dict:
    paths = fetch_models(cache)
    results = {"floor_db": floor, "models": {}}
    for spec in MODELS:
        if models and spec.name not in models:
            continue
        path = paths[spec.name]
        calib, evals = make_data(spec, N_CALIB, 0), make_data(spec, N_EVAL, 1)
        data_dir = out / spec.name
        data_dir.mkdir(parents=True, exist_ok=True)
        np.save(data_dir / "calib.npy", calib[:, 0])
        np.save(data_dir / "eval.npy", evals[:, 0])
        entry = {"kind": spec.kind, "file": path.name, "size_bytes": path.stat().st_size,
                 "anchors": {}, "targets": {}}
        entry["anchors"] = anchors(path, spec, calib, evals)
        for target in targets:
            print(f"{spec.name} x {target} ...", file=sys.stderr, flush=True)
            try:
                entry["targets"][target] = pack_one(path, spec, target, data_dir, floor)
            except Exception:
                entry["targets"][target] = {"status": "error",
                                            "message": traceback.format_exc().splitlines()[-1]}
            print(f"  {entry['targets'][target]}", file=sys.stderr, flush=True)
        results["models"][spec.name] = entry
        (out / "real_models.json").write_text(json.dumps(results, indent=1))
    (out / "real_models.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    targets = sorted({t for m in results["models"].values() for t in m["targets"]},
                     key=lambda t: TARGETS.index(t) if t in TARGETS else 99)
    head = ["model", "source", "best anchor (full int8)", *targets]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in results["models"].items():
        anchors = [f"{k}: {v['sqnr_db']} dB, {v['size_bytes'] / m['size_bytes']:.2f}x"
                   if "sqnr_db" in v else f"{k}: {v.get('error', '?')[:60]}"
                   for k, v in m["anchors"].items()]
        cells = [f"{name} ({m['kind']})", f"{m['size_bytes'] / 1024:.0f} KiB", "; ".join(anchors)]
        for t in targets:
            r = m["targets"].get(t, {})
            if r.get("status") == "packed":
                cells.append(f"{r['recipe']}: {r['sqnr_db']} dB, {r['size_ratio']:.2f}x, "
                             f"{r['latency_ms']} ms ({r['latency_source']})")
            else:
                best = r.get("best_full_int")
                cells.append(f"{r.get('status', '-')}" + (f" (best {best} dB)" if best else "")
                             + f": {r.get('message', '')[:90]}")
        rows.append("| " + " | ".join(cells) + " |")
    return f"Fidelity floor {results['floor_db']} dB\n\n" + "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgekit-bench")
    p.add_argument("--out", type=Path, default=Path("results/real_models"))
    p.add_argument("--floor", type=float, default=15.0)
    p.add_argument("--model", action="append", default=[])
    p.add_argument("--target", action="append", default=[])
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bench(args.cache, args.out, args.floor, args.model, args.target or list(TARGETS))
    print((args.out / "real_models.md").read_text())


if __name__ == "__main__":
    main()

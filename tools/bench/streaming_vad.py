"""A real streaming model through the packer: Silero VAD (ONNX, scalar int64 `sr`, recurrent
`state`/`stateN`, If nodes on the rate), as the `silero-vad` package on PyPI ships it.

The wheel is fetched with `pip download` (no hub), the ONNX file read from it, and offline
speech-like audio made here (16 kHz: noise stretches and voiced segments with harmonics and
formant-like envelopes) in 512-sample frames: 600 for calibration, 400 for evaluation, in
order, so the packer feeds the state back across frames. Packed for rpi4 with
`--input-value sr=16000` (folds the If on the rate), and tried for coral-usb and stm32h7.

    python tools/bench/streaming_vad.py [--version 6.2.3] [--targets rpi4,coral-usb,stm32h7]

Writes tools/bench/results/streaming_vad.json; the last stdout line is that JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

import edgekit
from edgekit.errors import EdgekitError
from edgekit_agent.bundle.reader import open_bundle

SR, FRAME = 16000, 512
RESULTS = Path(__file__).parent / "results" / "streaming_vad.json"


def silero_onnx(version: str, into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", f"silero-vad=={version}", "--no-deps",
                    "-q", "-d", str(into)], check=True)
    wheel = next(into.glob("silero_vad-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        (into / "silero_vad.onnx").write_bytes(zf.read("silero_vad/data/silero_vad.onnx"))
    return into / "silero_vad.onnx"


def speech_like_frames(n_segments: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n_segments):
        parts.append(rng.normal(0, rng.uniform(0.001, 0.01), int(SR * rng.uniform(0.2, 0.8))))
        parts.append(_voiced(rng, int(SR * rng.uniform(0.3, 1.0))))
    audio = np.concatenate(parts).astype(np.float32)
    n = len(audio) // FRAME
    return audio[: n * FRAME].reshape(n, FRAME)


def _voiced(rng: np.random.Generator, n: int) -> np.ndarray:
    f0, t = rng.uniform(90, 240), np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))) / SR
    formant = rng.uniform(300, 900)
    x = sum(np.sin(k * phase) / k * np.exp(-((k * f0 - formant) / 600) ** 2) for k in range(1, 30))
    env = (0.5 * (1 - np.cos(np.pi * np.minimum(t / 0.05, 1)))
           * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)))
    return x * env * rng.uniform(0.05, 0.4)


def pack_one(model: Path, target: str, work: Path) -> dict:
    out = work / f"vad-{target}.ekb"
    try:
        result = edgekit.pack(str(model), target, out, calib=str(work / "calib.npz"),
                              eval_data=str(work / "eval.npz"), input_values={"sr": SR},
                              input_shapes={"input": (1, FRAME), "state": (2, 1, 128)})
    except EdgekitError as exc:
        return {"target": target, "packed": False, "error": str(exc)[:300]}
    m = open_bundle(out).manifest
    fid = m.primary.fidelity
    return {"target": target, "packed": True, "recipe": result.chosen[0].recipe.name,
            "format": m.model.format, "size_ratio": round(m.model.size_bytes / model.stat().st_size, 3),
            "sqnr_db": fid.min_sqnr_db, "pre_activation_sqnr_db": fid.pre_activation_sqnr_db,
            "latency_ms": m.primary.latency_ms, "latency_source": m.primary.latency_source,
            "notes": list(m.notes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default="6.2.3")
    ap.add_argument("--targets", default="rpi4,coral-usb,stm32h7")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-vad-") as tmp:
        work = Path(tmp)
        model = silero_onnx(args.version, work)
        frames = speech_like_frames()
        np.savez(work / "calib.npz", input=frames[:600])
        np.savez(work / "eval.npz", input=frames[600:1000])
        rows = [pack_one(model, t, work) for t in args.targets.split(",")]
    summary = {"model": f"silero-vad {args.version} silero_vad.onnx", "frames": [600, 400],
               "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    for r in rows:
        print(r["target"], r.get("recipe") or "refused", r.get("size_ratio", ""),
              r.get("sqnr_db", ""), r.get("pre_activation_sqnr_db", ""), r.get("error", ""))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

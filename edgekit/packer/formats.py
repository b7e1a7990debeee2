"""Which model format (and so which runtime) a target gets: convert when needed, measure when free.

- A TFLite-only family (Edge TPU, Ethos-U, MCU) gets ONNX input converted with onnx2tf.
- A CPU target with ONNX input and the `convert` extra installed runs the float model in both
  ONNX Runtime and LiteRT (XNNPACK), interleaved, and keeps the faster (``runtime="auto"``).
Conversions are cached by content hash (onnx2tf takes seconds), under ``EDGEKIT_CACHE_DIR``
or ``~/.cache/edgekit``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import sha256_hex

from ..dataset import Dataset
from ..defaults import RUNTIME_CHOICES
from ..errors import ConfigError, ModelError
from .convert import onnx_to_tflite, package_version, require_convert_extra
from .evaluate import interleaved_latency, make_runner

FASTER_BY = 0.95  # switch runtimes only for a clear win: p50 at most 95 % of the other's
ROUNDS = 3


@dataclass(frozen=True)
class FormatChoice:
    model: bytes
    format: str
    steps: tuple[str, ...]
    note: str = ""  # also said in the pack summary, not only in the recipe steps


def choose_format(model: bytes, fmt: str, family: Any, profile_family: str, runtime: str,
                  data: Dataset) -> FormatChoice:
    if runtime not in RUNTIME_CHOICES:
        raise ConfigError("unknown runtime", key="--runtime", value=runtime,
                          allowed=RUNTIME_CHOICES)
    if fmt not in family.MODEL_FORMATS:
        return _converted(model, data, "the target runs TFLite only")
    if profile_family != "cpu" or fmt != "onnx" or runtime == "onnxruntime":
        return FormatChoice(model, fmt, ())
    if runtime == "litert":
        return _converted(model, data, "--runtime litert")
    return _faster(model, data)


def _converted(model: bytes, data: Dataset, why: str) -> FormatChoice:
    tflite, summary = convert_cached(model, data)
    return FormatChoice(tflite, "tflite", (f"converted ONNX -> TFLite ({why}): {summary}",))


def _faster(model: bytes, data: Dataset) -> FormatChoice:
    try:
        require_convert_extra()
    except ModelError:
        return FormatChoice(model, "onnx", ("runtime: onnxruntime (LiteRT not tried: the convert "
                                            "extra is not installed)",),
                            note="LiteRT and its TFLite recipes were not tried: "
                                 "pip install 'edgekit[convert]' adds them")
    try:
        tflite, summary = convert_cached(model, data)
        lite = make_runner(tflite, "tflite")
    except ModelError as exc:  # ONNX Runtime runs what onnx2tf cannot convert
        return FormatChoice(model, "onnx", (f"runtime: onnxruntime (LiteRT not tried: {exc})",))
    ort = make_runner(model, "onnx")
    # ONNX Runtime's spinning worker threads make single timings bimodal on a busy host:
    # decide on the median of a few rounds.
    ratio = float(np.median([interleaved_latency(lite, ort, data.sample(0), min_runs=100,
                                                 min_seconds=0.5).ratio for _ in range(ROUNDS)]))
    verdict = f"float p50 LiteRT/onnxruntime = {ratio:.2f}"
    if ratio <= FASTER_BY:
        return FormatChoice(tflite, "tflite", (f"runtime: LiteRT (XNNPACK), {verdict}; "
                                               f"converted ONNX -> TFLite: {summary}",))
    return FormatChoice(model, "onnx", (f"runtime: onnxruntime, {verdict}",))


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE_DIR") or Path.home() / ".cache" / "edgekit")


def convert_cached(model: bytes, data: Dataset) -> tuple[bytes, str]:
    """(TFLite bytes, one-line summary with the conversion SQNR), from the cache when possible."""

    key = sha256_hex(model + package_version("onnx2tf").encode())[:32]
    blob, meta = cache_dir() / "convert" / f"{key}.tflite", cache_dir() / "convert" / f"{key}.json"
    if blob.is_file() and meta.is_file():
        try:
            return blob.read_bytes(), json.loads(meta.read_text())["summary"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt below
    result = onnx_to_tflite(model, data)
    summary = ("onnx2tf, SQNR vs ONNX "
               + ", ".join(f"{k} {v:.1f} dB" for k, v in result.sqnr_db_per_output.items()))
    _store(blob, result.tflite_bytes)
    _store(meta, json.dumps({"summary": summary, "steps": list(result.steps)}).encode())
    return result.tflite_bytes, summary


def _store(path: Path, data: bytes) -> None:
    """Atomic write; a cache that cannot be written is only slower, never an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass

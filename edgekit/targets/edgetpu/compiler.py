"""``edgetpu_compiler``: run it and read its figures from the log."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ...errors import ModelError

COMPILER = "edgetpu_compiler"
COMPILER_TIMEOUT_S = 180
COMPILE_PENDING = f"pending: runs on first use on a host with {COMPILER}"


_SIZE = r"([\d.]+)\s*([KMG]?i?B)"
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3,
          "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3}
_LOG_FIELDS = {
    "onchip_param_bytes_used": rf"On-chip memory used for caching model parameters:\s*{_SIZE}",
    "onchip_param_bytes_remaining":
        rf"On-chip memory remaining for caching model parameters:\s*{_SIZE}",
    "offchip_param_bytes":
        rf"Off-chip memory used for streaming uncached model parameters:\s*{_SIZE}",
}
_LOG_COUNTS = {
    "edgetpu_subgraphs": r"Number of Edge TPU subgraphs:\s*(\d+)",
    "total_ops": r"Total number of operations:\s*(\d+)",
    "ops_mapped": r"Number of operations that will run on Edge TPU:\s*(\d+)",
    "ops_unmapped": r"Number of operations that will run on CPU:\s*(\d+)",
}
_OP_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")
MAPPED_STATUS = "Mapped to Edge TPU"


def parse_compiler_log(text: str) -> dict[str, Any]:
    """Figures from ``edgetpu_compiler --show_operations`` output (stdout and operation log)."""
    out: dict[str, Any] = {}
    version = re.search(r"Edge TPU Compiler version\s+(\S+)", text)
    if version:
        out["version"] = version.group(1)
    for key, pattern in _LOG_FIELDS.items():
        hit = re.search(pattern, text)
        if hit:
            out[key] = round(float(hit.group(1)) * _UNITS[hit.group(2)])
    for key, pattern in _LOG_COUNTS.items():
        hit = re.search(pattern, text)
        if hit:
            out[key] = int(hit.group(1))
    rows = [{"op": m.group(1), "count": int(m.group(2)), "status": m.group(3)}
            for m in map(_OP_ROW.match, text.splitlines()) if m]
    if rows:
        out["operations"] = rows
        mapped = sum(r["count"] for r in rows if r["status"] == MAPPED_STATUS)
        out.setdefault("ops_mapped", mapped)
        out.setdefault("ops_unmapped", sum(r["count"] for r in rows) - mapped)
    if "ops_mapped" in out and "ops_unmapped" in out:
        out.setdefault("total_ops", out["ops_mapped"] + out["ops_unmapped"])
    return out


def run_compiler(model: bytes, runtime: int,
                 compiler: str = COMPILER) -> tuple[bytes, dict[str, Any]]:
    """Compile with ``edgetpu_compiler``; returns the compiled model and the parsed log."""
    with tempfile.TemporaryDirectory(prefix="edgekit-edgetpu-") as tmp:
        src = Path(tmp) / "model.tflite"
        src.write_bytes(model)
        cmd = [compiler, "--show_operations", "--out_dir", tmp, "--min_runtime_version",
               str(runtime),
               "--timeout_sec", str(COMPILER_TIMEOUT_S), str(src)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=COMPILER_TIMEOUT_S + 30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelError(f"{compiler} did not run: {exc}") from None
        text = proc.stdout + "\n" + proc.stderr
        out = Path(tmp) / "model_edgetpu.tflite"
        if proc.returncode != 0 or not out.is_file():
            raise ModelError(f"{compiler} failed: {_last_error_line(text)}")
        log = Path(tmp) / "model_edgetpu.log"
        if log.is_file():
            text += "\n" + log.read_text(errors="replace")
        return out.read_bytes(), parse_compiler_log(text)


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:300]

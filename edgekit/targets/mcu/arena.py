"""The smallest TFLM tensor arena a model allocates and invokes with, measured by bisection."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_agent.bundle.modelcheck import check_tflite

from ...errors import ModelError, UnsupportedOpError
from ...tflite import model as tfl

DEFAULT_ALIGNMENT = 16
MAX_ARENA_BYTES = 1 << 30
WORKER_MODULE = "edgekit.targets.mcu.arena_worker"


@dataclass(frozen=True)
class ArenaMeasurement:
    measured_bytes: int       # smallest arena that allocates and invokes (bisection)
    recorded_bytes: int       # TFLM's RecordingMicroAllocator total
    recorded_head_bytes: int
    recorded_tail_bytes: int
    probes: int               # interpreter instances created to find it

    def with_margin(self, alignment: int) -> int:
        """The measured arena rounded up to the alignment, plus one alignment unit: an arena
        buffer that does not start aligned loses up to ``alignment - 1`` bytes to TFLM."""
        return -(-self.measured_bytes // alignment) * alignment + alignment


def measure_arena(model: bytes) -> ArenaMeasurement:
    """The smallest arena with which the model allocates and invokes.

    Double the arena until the model runs; read TFLM's recorded allocation there; then search
    the edge starting from that figure (usually exact, sometimes low: it counts only what stays
    allocated) by galloping up from it and bisecting. The result ``n`` runs and ``n - 1`` does not.
    """
    check_tflite(model, allow_sparse=False)  # TFLM reads whatever it is given: verify first
    with _ArenaProbe(model) as probe:
        size = max(4096, 1 << (len(model) - 1).bit_length())
        while True:
            ok, log = probe.run(size)
            if ok:
                break
            if size >= MAX_ARENA_BYTES or _not_an_arena_problem(log):
                raise _tflm_error(log)
            size *= 2
        recorded = probe.record(size)
        lo, hi = _bracket(probe, recorded["total"], size)
        while lo < hi:  # invariant: hi runs; everything below lo fails
            mid = (lo + hi) // 2
            if probe.run(mid)[0]:
                hi = mid
            else:
                lo = mid + 1
        return ArenaMeasurement(measured_bytes=lo, recorded_bytes=recorded["total"],
                                recorded_head_bytes=recorded["head"],
                                recorded_tail_bytes=recorded["tail"], probes=probe.count)


def _bracket(probe: _ArenaProbe, guess: int, works: int) -> tuple[int, int]:
    """(lo, hi) around the edge, with hi known to run and lo - 1 known to fail (or lo = 1)."""
    if guess >= works:
        return 1, works
    if probe.run(guess)[0]:
        return (guess, guess) if not probe.run(guess - 1)[0] else (1, guess - 1)
    lo, step = guess + 1, DEFAULT_ALIGNMENT
    while True:
        candidate = min(lo + step - 1, works)
        if candidate == works or probe.run(candidate)[0]:
            return lo, candidate
        lo, step = candidate + 1, step * 4


class _ArenaProbe:
    """Allocate and invoke the model with a given arena in a TFLM child process."""

    def __init__(self, model: bytes) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="edgekit-tflm-")
        self._path = Path(self._dir.name) / "model.tflite"
        self._path.write_bytes(model)
        self._io = json.dumps([[list(x.shape), x.dtype.name] for x in _zero_inputs(model)])
        self._proc: subprocess.Popen[str] | None = None
        self.count = 0

    def __enter__(self) -> _ArenaProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
        self._dir.cleanup()

    def run(self, size: int) -> tuple[bool, str]:
        answer = self._ask("run", size)
        return (False,
                "TFLM crashed while allocating the arena") if answer is None else (answer["ok"],
                                                                                   answer["log"])

    def record(self, size: int) -> dict[str, int]:
        answer = self._ask("record", size)
        found = dict(re.findall(r"Arena allocation (total|head|tail) (\d+) bytes",
                                answer["log"] if answer else ""))
        if "total" not in found:
            raise ModelError("TFLM printed no arena allocation record")
        return {k: int(found.get(k, 0)) for k in ("total", "head", "tail")}

    def _ask(self, kind: str, size: int) -> dict[str, Any] | None:
        self.count += 1
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(self._path), self._io],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            self._proc.stdin.write(f"{kind} {size}\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:  # the child died on this size
            self._stop()
            return None
        return json.loads(line)

    def _stop(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _not_an_arena_problem(message: str) -> bool:
    return not re.search(r"Failed to (allocate|resize)|missing: \d+|arena", message, re.I)


def _tflm_error(message: str) -> ModelError:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    missing = next(
        (m for ln in lines for m in re.findall(r"Didn't find op for \w+ opcode '([^']+)'", ln)),
        None,
    )
    if missing:
        return UnsupportedOpError(f"TFLM has no kernel for {missing}")
    return ModelError(f"TFLM cannot run the model: {lines[0] if lines else 'unknown error'}")


def _zero_inputs(model: bytes) -> list[np.ndarray]:
    model_t = tfl.load(model)
    sg = model_t.subgraphs[0]
    return [np.zeros([max(int(d), 1) for d in sg.tensors[i].shape],
                     dtype=tfl.tensor_type_name(sg.tensors[i].type)) for i in sg.inputs]



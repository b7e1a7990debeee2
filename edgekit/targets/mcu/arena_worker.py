"""The arena probe's child process: ``python -m edgekit.targets.mcu.arena_worker MODEL IO``.

TFLM can crash (SIGSEGV) inside a kernel's Prepare when the arena is too small, so each request
is answered from a process that may die; a death means "no". ``IO`` is a JSON list of
``[shape, dtype]`` per model input. Each stdin line is ``run SIZE`` or ``record SIZE``; each
answer is one JSON line ``{"ok": bool, "log": str}`` with the tail of what TFLM logged.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from .ops import captured_stderr

LOG_TAIL_CHARS = 4000


def attempt(tflm: Any, model: bytes, inputs: list[np.ndarray], size: int,
            record: bool) -> tuple[bool, str]:
    """Allocate and invoke with an arena of ``size`` bytes; (it ran, what TFLM logged)."""
    with captured_stderr() as log:
        try:
            it = tflm.Interpreter.from_bytes(model, arena_size=size)
            for i, x in enumerate(inputs):
                it.set_input(x, i)
            it.invoke()
            if record:
                it.print_allocations()
            ok = True
        except (RuntimeError, ValueError):
            ok = False
    return ok, log.text


def serve(model: bytes, inputs: list[np.ndarray]) -> None:
    from tflite_micro.python.tflite_micro import runtime as tflm

    for line in sys.stdin:
        kind, size = line.split()
        ok, log = attempt(tflm, model, inputs, int(size), kind == "record")
        sys.stdout.write(json.dumps({"ok": ok, "log": log[-LOG_TAIL_CHARS:]}) + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> None:
    model_path, io = argv
    with open(model_path, "rb") as f:
        model = f.read()
    serve(model, [np.zeros(shape, dtype) for shape, dtype in json.loads(io)])


if __name__ == "__main__":
    main(sys.argv[1:])

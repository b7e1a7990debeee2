"""Microcontroller family: TensorFlow Lite Micro, measured arena, generated C sources.

Every figure comes from the real ``tflite-micro`` interpreter running the model on the host:
the op set (``ops``: ``data/tflm_ops.toml``, probed from the installed interpreter), the
smallest tensor arena that allocates and invokes (``arena``: bisection in a child process,
``arena_worker``, cross-checked with TFLM's recording allocator), and the outputs, compared with
LiteRT's on the same inputs (``check``). ``csource`` writes the C sources; ``family`` ties it up.
"""

from .arena import ArenaMeasurement, measure_arena
from .check import compare_tflm_litert, random_inputs
from .csource import generate_sources
from .family import McuFamily, all_ops, rewrite_for_tflm
from .ops import (
           TflmOpSet,
           captured_stderr,
           probe_tflm_op_set,
           tflm_op_set,
           unsupported_ops,
           write_op_table,
)

__all__ = ["ArenaMeasurement", "McuFamily", "TflmOpSet", "all_ops", "captured_stderr",
           "compare_tflm_litert", "generate_sources", "measure_arena", "probe_tflm_op_set",
           "random_inputs", "rewrite_for_tflm", "tflm_op_set", "unsupported_ops", "write_op_table"]

"""Edge TPU family (Coral USB / Dev Board): full-int8 TFLite, op compatibility and partition.

edgekit checks every op of the main graph against Coral's supported-operations table
(``data/edgetpu_ops.toml``) and the general model rules (int8/uint8 tensors, static shapes, at
most the 3 innermost dimensions larger than 1, one subgraph), then predicts the partition the
compiler makes: it cuts the graph once, so the first op that cannot map and every op after it
run on the CPU. Fallbacks that a graph rewrite removes (float I/O wrappers, an activation fused
into pooling, LEAKY_RELU, a float op left behind by the quantizer) are rewritten, run against
the original, and re-checked. When ``edgetpu_compiler`` is on PATH it is run and its log parsed;
otherwise the report says the compile step is pending.

Modules: ``table`` (the supported-operations table), ``checks`` (its limitations as code),
``analysis`` (per-op verdicts, partition), ``rewrites``, ``compiler``, ``family``.
"""

from .analysis import TAIL_REASON, OpVerdict, Partition, analyze, partition, require_int8
from .checks import CHECKS, OpContext
from .compiler import COMPILE_PENDING, COMPILER, parse_compiler_log, run_compiler
from .family import EdgeTpuFamily
from .rewrites import fix_fallbacks
from .table import (
                    DEFAULT_RUNTIME,
                    OPS_TABLE_PATH,
                    RUNTIME_VERSIONS,
                    OpRule,
                    OpsTable,
                    load_ops_table,
)

__all__ = ["CHECKS", "COMPILER", "COMPILE_PENDING", "DEFAULT_RUNTIME", "OPS_TABLE_PATH",
           "RUNTIME_VERSIONS", "TAIL_REASON", "EdgeTpuFamily", "OpContext", "OpRule", "OpVerdict",
           "OpsTable", "Partition", "analyze", "fix_fallbacks", "load_ops_table",
           "parse_compiler_log",
           "partition", "require_int8", "run_compiler"]

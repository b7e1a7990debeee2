"""The self-test in a child process: ``python -m edgekit_agent.store.selftest_worker BUNDLE``.

TFLM trusts the model and the arena completely; a model that passed the verifier may still
crash a kernel (SIGSEGV). Run there, a crash is the child's exit status, which the store turns
into a one-line refusal, instead of the end of the agent (or of ``edgekit-agent install``).
Prints one JSON line: the :class:`SelfTestResult`, or ``{"error": "..."}`` with exit 1.
"""

from __future__ import annotations

import json
import sys

from ..bundle.reader import open_bundle
from ..errors import EdgekitError
from .durable import checkpoint
from .selftest import run_selftest


def main(argv: list[str]) -> int:
    checkpoint("selftest-child")  # tests: a runtime crash at this point
    try:
        result = run_selftest(open_bundle(argv[0]))
    except EdgekitError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    print(json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

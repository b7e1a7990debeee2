"""onnx2tf in a child process: ``python -m edgekit.packer.convert_worker KWARGS_JSON``.

Run by ``convert._run_onnx2tf`` inside a temporary working directory, because onnx2tf calls
``sys.exit`` on some errors, keeps global TensorFlow state and reads its sample-data file from
the working directory. ``KWARGS_JSON`` is the keyword arguments of ``onnx2tf.convert``. Exit 3
with ``EDGEKIT_MISSING_MODULE <name>`` on stderr when the convert extra is not installed.
"""

from __future__ import annotations

import json
import sys

MISSING_MARK = "EDGEKIT_MISSING_MODULE"
EXIT_MISSING = 3


def main(argv: list[str]) -> int:
    kwargs = json.loads(argv[0])
    try:
        import onnx2tf
    except ImportError as exc:
        sys.stderr.write(f"{MISSING_MARK} {exc.name or exc}\n")
        return EXIT_MISSING
    onnx2tf.convert(**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

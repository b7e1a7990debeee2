"""The onnx2tf child process is a real module (``python -m edgekit.packer.convert_worker``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from edgekit.packer.convert import EXTRA_MESSAGE, WORKER_MODULE, _conversion_error


def _worker(tmp_path, kwargs, *, shadow: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if shadow:  # an onnx2tf that cannot be imported, first on the path: the extra is "missing"
        (tmp_path / "onnx2tf").mkdir()
        (tmp_path / "onnx2tf" / "__init__.py").write_text("raise ImportError('gone', name='onnx2tf')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", WORKER_MODULE, json.dumps(kwargs)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


def test_missing_extra_is_reported_by_name(tmp_path):
    proc = _worker(tmp_path, {}, shadow=True)
    assert proc.returncode == 3 and proc.stderr.strip() == "EDGEKIT_MISSING_MODULE onnx2tf"
    assert str(_conversion_error(proc.stderr)) == f"{EXTRA_MESSAGE} (missing: onnx2tf)"


def test_onnx2tf_failure_is_a_nonzero_exit(tmp_path):
    proc = _worker(tmp_path, {"input_onnx_file_path": "absent.onnx", "output_folder_path": "out",
                              "non_verbose": True})
    assert proc.returncode != 0 and not (tmp_path / "out" / "model_float32.tflite").exists()

"""The TF converter route a user takes by hand: onnx2tf → SavedModel → TFLiteConverter full int8.

    python tools/bench/tf_anchor.py MODEL.onnx CALIB_NCHW.npy OUT_DIR

Run by real_models.py in a child process (onnx2tf calls sys.exit on some errors and keeps global
TensorFlow state). onnx2tf converts with its defaults (NCHW inputs become NHWC) inside OUT_DIR,
with its sample-data file provided (it downloads it otherwise, and there is no internet). The
SavedModel it writes is converted by ``tf.lite.TFLiteConverter`` with ``Optimize.DEFAULT``,
``TFLITE_BUILTINS_INT8`` only and int8 inputs/outputs, its representative dataset being the same
calibration samples, transposed to NHWC. Writes OUT_DIR/tf_int8.tflite and prints a JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

SAMPLE_DATA_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def convert(onnx_path: Path, calib: np.ndarray, out: Path) -> dict:
    import onnx2tf
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    np.save(SAMPLE_DATA_FILE, np.random.default_rng(0).random((20, 128, 128, 3), np.float32))
    onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path="saved_model",
                    non_verbose=True)
    nhwc = calib.transpose(0, 2, 3, 1) if calib.ndim == 4 else calib

    def representative():
        for x in nhwc:
            yield [x[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_saved_model("saved_model")
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    model = conv.convert()
    (out / "tf_int8.tflite").write_bytes(model)
    return {"int8": str(out / "tf_int8.tflite"), "size_bytes": len(model),
            "float": str(out / "saved_model" / f"{onnx_path.stem}_float32.tflite"),
            "onnx2tf": onnx2tf.__version__, "tensorflow": tf.__version__}


if __name__ == "__main__":
    result = convert(Path(sys.argv[1]).resolve(), np.load(sys.argv[2]), Path(sys.argv[3]).resolve())
    print(json.dumps(result))

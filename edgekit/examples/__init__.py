"""Built-in example models, shipped in the package (regenerate with tools/make_examples.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgekitError

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Example:
    name: str
    description: str
    onnx: Path
    tflite: Path
    calib: Path
    eval: Path
    labels: Path

    def to_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in vars(self).items()}


EXAMPLES = {
    "digits": Example(
        name="digits",
        description="8x8 handwritten digits CNN (scikit-learn digits), 38k params, "
                    "NHWC float input",
        onnx=_HERE / "digits" / "digits.onnx",
        tflite=_HERE / "digits" / "digits.tflite",
        calib=_HERE / "digits" / "calib.npz",
        eval=_HERE / "digits" / "test.npz",
        labels=_HERE / "digits" / "test_labels.npy",
    ),
}


def get_example(name: str) -> Example:
    if name not in EXAMPLES:
        raise EdgekitError(f"unknown example {name!r} (available: {', '.join(EXAMPLES)})")
    return EXAMPLES[name]

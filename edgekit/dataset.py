"""Calibration and evaluation data: .npz / .npy files, folders of them, or folders of images.

Every array is checked against the model's inputs (shape and dtype kind) before use, so a
wrong file is a one-line CalibrationError, not a crash deep inside a quantizer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit_agent.bundle.manifest import TensorSpec

from .errors import CalibrationError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm")


@dataclass(frozen=True)
class Preprocess:
    """How images become input tensors: resize, scale to [0,1], (x - mean) / std, layout."""

    size: tuple[int, int] | None = None  # (height, width); default: the model input's
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "nhwc"
    grayscale: bool = False


@dataclass(frozen=True)
class Dataset:
    """Samples for a model: one (N, *sample_shape) array per input, in the model's input order."""

    inputs: tuple[TensorSpec, ...]
    arrays: tuple[np.ndarray, ...]
    synthetic: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(self.arrays[0]) if self.arrays else 0

    def sample(self, i: int) -> list[np.ndarray]:
        return [a[i:i + 1].reshape(spec.shape).astype(spec.dtype, copy=False)
                for a, spec in zip(self.arrays, self.inputs, strict=True)]

    def samples(self, limit: int | None = None) -> Iterator[list[np.ndarray]]:
        for i in range(min(len(self), limit or len(self))):
            yield self.sample(i)

    def feeds(self, limit: int | None = None) -> list[dict[str, np.ndarray]]:
        """Samples keyed by input name (what quantizers' calibration readers want)."""
        names = [s.name for s in self.inputs]
        return [dict(zip(names, s, strict=True)) for s in self.samples(limit)]

    def split(self, n: int) -> tuple[Dataset, Dataset]:
        head = Dataset(self.inputs, tuple(a[:n] for a in self.arrays), self.synthetic, self.source)
        tail = Dataset(self.inputs, tuple(a[n:] for a in self.arrays), self.synthetic, self.source)
        return head, tail

    def with_inputs(self, inputs: Sequence[TensorSpec]) -> Dataset:
        """The same samples for a model whose inputs have other names/dtypes (e.g. a converted
        one)."""
        return Dataset(tuple(inputs), self.arrays, self.synthetic, self.source)


def load_dataset(path: str | Path, inputs: Sequence[TensorSpec],
                 preprocess: Preprocess | None = None) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"{path}: no such calibration/evaluation data")
    if path.is_dir():
        arrays = _load_folder(path, inputs, preprocess or Preprocess())
    else:
        arrays = _load_file(path, inputs)
    checked = (check_array(a, spec, str(path)) for a, spec in zip(arrays, inputs, strict=True))
    return Dataset(tuple(inputs), tuple(checked), source=str(path))


def synthetic_dataset(inputs: Sequence[TensorSpec], n: int = 64, seed: int = 0) -> Dataset:
    """Uniform [0, 1) floats: a stand-in that must be flagged wherever its figures appear."""
    rng = np.random.default_rng(seed)
    arrays = tuple(rng.random((n, *_sample_shape(s)), dtype=np.float32).astype(s.dtype)
                   for s in inputs)
    return Dataset(tuple(inputs), arrays, synthetic=True, source="synthetic")


def load_labels(path: str | Path, n: int) -> np.ndarray:
    path = Path(path)
    try:
        if path.suffix == ".npy":
            labels = np.load(path, allow_pickle=False)
        else:
            labels = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: cannot read labels ({exc})") from None
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind not in "iu":
        raise CalibrationError(f"{path}: labels must be integers, got {labels.dtype}")
    if len(labels) != n:
        raise CalibrationError(f"{path}: {len(labels)} labels for {n} evaluation samples")
    return labels.astype(np.int64)


def _sample_shape(spec: TensorSpec) -> tuple[int, ...]:
    return spec.shape[1:] if spec.shape and spec.shape[0] == 1 else spec.shape


def _load_file(path: Path, inputs: Sequence[TensorSpec]) -> list[np.ndarray]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return _pick_arrays({k: npz[k] for k in npz.files}, inputs, str(path))
        if path.suffix == ".npy":
            return _pick_arrays({"": np.load(path, allow_pickle=False)}, inputs, str(path))
    except (OSError, ValueError, EOFError) as exc:
        raise CalibrationError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from None
    raise CalibrationError(f"{path}: unsupported data file (use .npz, .npy, or a folder)")


def _pick_arrays(found: dict[str, np.ndarray],
                 inputs: Sequence[TensorSpec], src: str) -> list[np.ndarray]:
    if len(inputs) == 1 and len(found) == 1:
        return [next(iter(found.values()))]
    missing = [s.name for s in inputs if s.name not in found]
    if missing:
        raise CalibrationError(f"{src}: no array for input(s) {', '.join(missing)} "
                               f"(file has: {', '.join(found) or 'one unnamed array'})")
    return [found[s.name] for s in inputs]


def check_array(arr: np.ndarray, spec: TensorSpec, src: str) -> np.ndarray:
    sample = _sample_shape(spec)
    if arr.shape[1:] != tuple(sample):
        if arr.shape == tuple(sample):  # a single sample without a batch axis
            arr = arr[None]
        else:
            raise CalibrationError(f"{src}: input {spec.name!r} expects samples of shape "
                                   f"{list(sample)}, got an array of shape {list(arr.shape)}")
    want = np.dtype(spec.dtype)
    if (want.kind == "f") != (arr.dtype.kind == "f"):
        raise CalibrationError(
            f"{src}: input {spec.name!r} expects {want.name} data, got {arr.dtype}"
        )
    if len(arr) == 0:
        raise CalibrationError(f"{src}: input {spec.name!r} has no samples")
    if want.kind == "f" and not np.isfinite(arr).all():
        raise CalibrationError(f"{src}: input {spec.name!r} contains NaN or inf")
    return np.ascontiguousarray(arr.astype(want, copy=False))


def _load_folder(path: Path, inputs: Sequence[TensorSpec], pre: Preprocess) -> list[np.ndarray]:
    files = sorted(p for p in path.iterdir() if p.is_file())
    arrays_files = [p for p in files if p.suffix in (".npy", ".npz")]
    image_files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if arrays_files:
        parts = [_load_file(p, inputs) for p in arrays_files]
        return [np.concatenate([_as_batch(p[i], s) for p in parts]) for i, s in enumerate(inputs)]
    if image_files:
        if len(inputs) != 1:
            raise CalibrationError(f"{path}: image folders need a single-input model")
        return [np.stack([_load_image(p, inputs[0], pre) for p in image_files])]
    raise CalibrationError(f"{path}: folder has no .npy, .npz or image files")


def _as_batch(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return arr[None] if arr.shape == tuple(_sample_shape(spec)) else arr


def _load_image(path: Path, spec: TensorSpec, pre: Preprocess) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise CalibrationError("image folders need Pillow: pip install pillow") from None
    sample = _sample_shape(spec)
    h, w = pre.size or ((sample[0], sample[1]) if pre.layout == "nhwc" else (sample[1], sample[2]))
    try:
        with Image.open(path) as img:
            img = img.convert("L" if pre.grayscale else "RGB").resize((w, h))
            x = np.asarray(img, dtype=np.float32) / 255.0
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read image ({exc})") from None
    if x.ndim == 2:
        x = x[..., None]
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return x.transpose(2, 0, 1) if pre.layout == "nchw" else x

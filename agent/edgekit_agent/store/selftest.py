"""Self-test vectors (shipped by the packer): ``manifest.extras["selftest"]`` names a member
(role ``selftest``) holding an ``.npz`` (``allow_pickle=False``) with

    input_<i>    float array for the primary variant's i-th input (manifest order): one test
                 vector in the input's own shape, or K vectors stacked on an extra leading axis,
                 or (for a model whose batch dimension is 1) K vectors concatenated along it
    output_<j>   the expected float (dequantized) j-th output, same convention and the same K
    atol, rtol   optional 0-d floats; a vector passes when |got - expected| <= atol + rtol*|expected|
                 everywhere. Defaults: rtol 1e-3, atol 1e-4 plus one quantization step (the
                 output's scale) for quantized outputs.

A variant whose target report names a ``selftest_model`` (its host-runnable form: an Ethos-U
bundle's int8 model before Vela) is tested on that form: a host cannot run the NPU's op.

A bundle without one gets a smoke test: zeros in the input specs (dynamic dims as 1) must give
finite outputs of the declared shapes. Every other variant gets the smoke test too.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..bundle.manifest import TensorSpec, Variant
from ..bundle.reader import Bundle
from ..errors import StoreError
from ..runtime.loader import load_runner

SELFTEST_EXTRA = "selftest"
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4


@dataclass(frozen=True)
class SelfTestResult:
    kind: str  # "vectors" | "smoke"
    vectors: int
    max_abs_error: float
    variants_smoked: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "variants_smoked": list(self.variants_smoked)}




def run_selftest(bundle: Bundle, threads: int | None = None) -> SelfTestResult:
    """Run the shipped vectors on the primary variant and a smoke inference on every variant."""
    manifest = bundle.manifest
    variant, runner = load_runner(bundle, None, threads, host_form=True)
    member = manifest.extras.get(SELFTEST_EXTRA)
    if member:
        vectors, max_err = _run_vectors(runner, variant, bundle.read(member))
        kind = "vectors"
    else:
        _smoke(runner, variant)
        vectors, max_err, kind = 0, 0.0, "smoke"
    smoked = []
    for other in manifest.variants:
        _smoke(load_runner(bundle, other.name, threads, host_form=True)[1], other)
        smoked.append(other.name)
    return SelfTestResult(kind=kind, vectors=vectors, max_abs_error=max_err,
                          variants_smoked=tuple(smoked))


def _run_vectors(runner: Any, variant: Variant, data: bytes) -> tuple[int, float]:
    arrays = _load_npz(data)
    ins = [_vector_stack(arrays, f"input_{i}", s) for i, s in enumerate(variant.inputs)]
    outs = [_vector_stack(arrays, f"output_{j}", s) for j, s in enumerate(variant.outputs)]
    counts = {len(a) for a in ins + outs}
    if len(counts) != 1:
        raise StoreError(f"self-test vectors disagree on the number of cases: {sorted(counts)}")
    rtol = _scalar(arrays, "rtol", DEFAULT_RTOL)
    atol = _scalar(arrays, "atol", None)
    max_err = 0.0
    for k in range(counts.pop()):
        got = runner([a[k] for a in ins])
        for g, want, spec in zip(got, (o[k] for o in outs), variant.outputs):
            if g.shape != want.shape:
                raise StoreError(f"self-test vector {k}: output {spec.name!r} has shape {g.shape}, "
                                 f"expected {want.shape}")
            err = np.abs(g.astype(np.float64) - want)
            limit = (atol if atol is not None else DEFAULT_ATOL + (spec.scale or 0.0)) + rtol * np.abs(want)
            max_err = max(max_err, float(err.max(initial=0.0)))
            if not np.all(err <= limit):
                raise StoreError(f"self-test vector {k}: output {spec.name!r} differs by up to "
                                 f"{float(err.max()):.4g} (allowed {float(np.max(limit)):.4g})")
    return len(ins[0]) if ins else 0, max_err


def _load_npz(data: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, KeyError) as exc:
        raise StoreError(f"self-test member is not a readable .npz: {exc}") from None


def _vector_stack(arrays: dict[str, np.ndarray], key: str, spec: TensorSpec) -> np.ndarray:
    if key not in arrays:
        raise StoreError(f"self-test file has no {key!r} (for {spec.name!r})")
    a = arrays[key]
    if a.dtype.kind not in "fiub":
        raise StoreError(f"self-test {key!r} has dtype {a.dtype}, expected numbers")
    if a.ndim == len(spec.shape):
        if _shape_fits(a.shape, spec.shape):
            a = a[None]
        elif spec.shape and spec.shape[0] == 1 and _shape_fits(a.shape[1:], spec.shape[1:]):
            a = a[:, None]  # K cases along the batch axis of a batch-1 model
    if a.ndim != len(spec.shape) + 1 or not _shape_fits(a.shape[1:], spec.shape):
        raise StoreError(f"self-test {key!r} has shape {a.shape}, expected {spec.shape} "
                         "(K cases: along a batch axis of 1, or on an extra leading axis)")
    return a.astype(np.float64) if key.startswith("output_") else a


def _scalar(arrays: dict[str, np.ndarray], key: str, default: float | None) -> float | None:
    if key not in arrays:
        return default
    a = arrays[key]
    if a.size != 1 or a.dtype.kind not in "fiu" or not np.isfinite(a).all() or float(a.ravel()[0]) < 0:
        raise StoreError(f"self-test {key!r} must be one finite number >= 0")
    return float(a.ravel()[0])


def _shape_fits(shape: tuple[int, ...], spec_shape: tuple[int, ...]) -> bool:
    return len(shape) == len(spec_shape) and all(s < 0 or s == d for d, s in zip(shape, spec_shape))


def _smoke(runner: Any, variant: Variant) -> None:
    zeros = [np.zeros([d if d > 0 else 1 for d in s.shape], dtype=_float_or_own(s))
             for s in variant.inputs]
    outs = runner(zeros)
    for out, spec in zip(outs, variant.outputs):
        if not _shape_fits(out.shape, spec.shape):
            raise StoreError(f"variant {variant.name!r}: output {spec.name!r} has shape {out.shape}, "
                             f"manifest says {spec.shape}")
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise StoreError(f"variant {variant.name!r}: output {spec.name!r} is not finite on zeros")


def _float_or_own(spec: TensorSpec) -> str:
    return "float32" if spec.scale is not None or spec.dtype.startswith("float") else spec.dtype



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
import json
import signal
import struct
import subprocess
import sys
import tokenize
import zipfile
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from ..bundle.manifest import TensorSpec, Variant
from ..bundle.reader import Bundle
from ..errors import StoreError, first_line
from ..runtime.loader import load_runner
from ..validate import printable

SELFTEST_EXTRA = "selftest"
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4
# Bounds on the vectors (the packer ships 4 cases of the declared shapes): a dynamic dim counts
# as DYNAMIC_DIM_CAP, and all arrays together stay under MAX_SELFTEST_BYTES.
MAX_SELFTEST_CASES = 64
DYNAMIC_DIM_CAP = 1024
MAX_SELFTEST_BYTES = 64 << 20
SELFTEST_TIMEOUT_S = 300.0
WORKER_MODULE = "edgekit_agent.store.selftest_worker"
# numpy's header parser also raises tokenize.TokenError and SyntaxError on garbage headers
_NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
               NotImplementedError, RuntimeError, struct.error, UnicodeDecodeError, SyntaxError,
               tokenize.TokenError, RecursionError)


@dataclass(frozen=True)
class SelfTestResult:
    kind: str  # "vectors" | "smoke"
    vectors: int
    max_abs_error: float
    variants_smoked: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "variants_smoked": list(self.variants_smoked)}




def needs_isolation(bundle: Bundle) -> bool:
    """TFLM (MCU bundles, TFLM C models) has no guard of its own against a hostile model."""
    m = bundle.manifest
    return m.family == "mcu" or any(v.model.format == "tflm-c" for v in m.all_variants)


def run_selftest_isolated(bundle: Bundle, timeout_s: float = SELFTEST_TIMEOUT_S) -> SelfTestResult:
    """:func:`run_selftest` in a child process; a crash or hang there is a StoreError."""
    cmd = [sys.executable, "-m", WORKER_MODULE, str(bundle.path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise StoreError(f"self-test did not finish within {timeout_s:g} s") from None
    except OSError as exc:
        raise StoreError(f"cannot start the self-test process: {exc.strerror or exc}") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else ""
        raise StoreError(f"the runtime crashed during the self-test (signal {-proc.returncode}"
                         f"{' ' + name if name else ''}); the model is refused")
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if proc.returncode != 0 or "error" in answer or "kind" not in answer:
        raise StoreError(answer.get("error") or f"self-test process exited with {proc.returncode}")
    return SelfTestResult(kind=answer["kind"], vectors=answer["vectors"],
                          max_abs_error=answer["max_abs_error"],
                          variants_smoked=tuple(answer["variants_smoked"]))


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
    arrays = load_vectors(data, variant)
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


def vector_limits(variant: Variant) -> dict[str, int]:
    """The most elements each .npz member may hold, from the manifest's declared shapes."""
    def bound(spec: TensorSpec) -> int:
        n = MAX_SELFTEST_CASES
        for d in spec.shape:
            n *= d if d > 0 else DYNAMIC_DIM_CAP
        return n
    limits = {f"input_{i}": bound(s) for i, s in enumerate(variant.inputs)}
    limits.update({f"output_{j}": bound(s) for j, s in enumerate(variant.outputs)})
    return {**limits, "atol": 1, "rtol": 1}


def load_vectors(data: bytes, variant: Variant) -> dict[str, np.ndarray]:
    """The .npz's arrays, each checked against its bound *before* it is decompressed: the
    ``.npy`` header is read from the zip member itself, its shape and dtype must fit the
    manifest, the member's size must be exactly header + data, and the data is read with a cap
    (a member that inflates past its header's claim is never held in memory)."""
    limits = vector_limits(variant)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise StoreError("self-test .npz holds a member twice")
            arrays: dict[str, np.ndarray] = {}
            budget = MAX_SELFTEST_BYTES
            for info in infos:
                key = info.filename.removesuffix(".npy")
                if key not in limits:
                    raise StoreError(f"self-test .npz member {printable(info.filename)!r} is not "
                                     "one of input_<i>, output_<j>, atol, rtol")
                arrays[key] = _read_npy(zf, info, limits[key], budget)
                budget -= arrays[key].nbytes
            return arrays
    except _NPZ_ERRORS as exc:
        raise StoreError(f"self-test member is not a readable .npz: {first_line(exc)}") from None


def _read_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_elements: int,
              budget: int) -> np.ndarray:
    key = info.filename
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise StoreError(f"self-test {key!r} uses compression method {info.compress_type}")
    with zf.open(info) as f:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(f)
        else:
            raise StoreError(f"self-test {key!r}: .npy format version {version}")
        if dtype.hasobject or dtype.kind not in "fiub" or dtype.itemsize > 8:
            raise StoreError(f"self-test {key!r} has dtype {dtype}, expected numbers")
        count = 1
        for d in shape:
            count *= d
        nbytes = count * dtype.itemsize
        if count > max_elements or nbytes > budget:
            raise StoreError(f"self-test {key!r} declares shape {shape} ({nbytes} bytes), more "
                             f"than the manifest's shapes allow ({max_elements} elements)")
        if info.file_size != f.tell() + nbytes:
            raise StoreError(f"self-test {key!r}: member is {info.file_size} bytes, its header "
                             f"says {f.tell() + nbytes}")
        payload = f.read(nbytes + 1)
    if len(payload) != nbytes:
        raise StoreError(f"self-test {key!r}: {len(payload)} data bytes, its header says {nbytes}")
    return np.frombuffer(payload, dtype).reshape(shape, order="F" if fortran else "C")


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



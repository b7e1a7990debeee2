"""TFLite quantization through ai-edge-quantizer, checked by running the result in LiteRT.

Schemes (ai-edge-quantizer recipe):
    static_int8   static_wi8_ai8: int8 weights (per channel) and activations from calibration;
                  with ``int8_io`` the model's inputs and outputs are int8 too (full integer,
                  as Edge TPU, Ethos-U and TFLM want), else they stay float32.
    dynamic_int8  dynamic_wi8_afp32: int8 weights, activations quantized on the fly.
    weight_int8   weight_only_wi8_afp32: int8 weights + DEQUANTIZE, float compute.
    weight_int4   weight_only_wi4_afp32: int4 weights + DEQUANTIZE, float compute.

Mixed precision: ai-edge-quantizer picks ops by a regex over the op's *scope*, the ';'-joined
names of its output tensors (``tfl_flatbuffer_utils.get_op_scope``). ``float_ops`` (indices in
subgraph 0's execution order) become exact, escaped scope regexes with the ``no_quantize``
algorithm, added after the whole-model rule so they win. The quantizer then inserts the
DEQUANTIZE/QUANTIZE pairs around them.

Sensitivity (which ops to leave in float): both models run on the calibration samples with
LiteRT's ``experimental_preserve_all_tensors``; every activation the two graphs share by name is
compared (quantized values dequantized with their own scale/zero point) as SQNR in dB.
``op_sensitivity`` reports the SQNR of each op's output; ``fallback_order`` ranks ops by the
noise each adds itself (output noise-to-signal ratio minus its inputs', not the error it
inherits), worst first: the order in which the packer moves ops to float.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import TensorSpec
from edgekit_agent.runtime import Runner, load_backend, quantize

from ..errors import CalibrationError, ConfigError, EdgekitError, ModelError
from ..tflite import model as tm

SCHEMES = ("dynamic_int8", "static_int8", "static_int16x8", "weight_int8", "weight_int4")
STATIC = ("static_int8", "static_int16x8")
_RECIPES = {"static_int8": "static_wi8_ai8", "static_int16x8": "static_wi8_ai16",
            "dynamic_int8": "dynamic_wi8_afp32",
            "weight_int8": "weight_only_wi8_afp32", "weight_int4": "weight_only_wi4_afp32"}
_NO_QUANTIZE = "no_quantize"
_CALIB_THREADS = 2
_MAX_DB = 100.0  # SQNR reported for a tensor that matches exactly


def quantize_tflite(model: bytes, scheme: str, calib: list[dict[str, np.ndarray]] | None = None, *,
                    float_ops: frozenset[int] = frozenset(), int8_io: bool = True,
                    ranges: Mapping[str, tuple[float, float]] | None = None,
                    int8_op_types: frozenset[str] = frozenset()) -> bytes:
    """The quantized model; raises ModelError when it does not run in LiteRT afterwards.
    ``int8_io`` only concerns the static schemes (the others keep float activations); for
    ``static_int16x8`` the interface is int16. ``ranges`` ({tensor name: (min, max)}) replace
    the calibrated min/max of those activations (see ``ranges.choose_ranges``);
    ``int8_op_types`` (op names, e.g. HARD_SWISH) keep int8 activations in ``static_int16x8``
    (ai-edge-quantizer has no int16 kernel config for them and would leave them float)."""
    if scheme not in SCHEMES:
        raise ConfigError("unknown TFLite quantization scheme", key="scheme", value=scheme,
                          allowed=SCHEMES)
    model_t = tm.load(model)
    static = scheme in STATIC
    samples = check_calibration(model_t, calib) if static else []
    quantizer = _make_quantizer(model, model_t, scheme, float_ops, float_io=static and not int8_io,
                                int8_op_types=int8_op_types)
    qsvs = _calibrate(quantizer, tm.signature_io(model_t)[0], samples) if static else None
    if qsvs is not None and ranges:
        qsvs = override_ranges(qsvs, ranges)
    try:
        with _quiet():
            out = bytes(quantizer.quantize(calibration_result=qsvs,
                                           enable_progress_report=False).quantized_model)
    except Exception as exc:  # ai-edge-quantizer raises ValueError/RuntimeError/KeyError/...
        raise ModelError(f"ai-edge-quantizer failed ({scheme}): {_first_line(exc)}") from None
    # Past 256 KB of weights ai-edge-quantizer stores buffers after the flatbuffer (offset/size).
    # TFLM, Vela and the Edge TPU compiler read only inline buffers: TFLM silently treats the
    # weights as uninitialised activations (arena = weights size, wrong outputs). Inline them.
    out = tm.save(tm.load(out))
    if static and int8_io:
        out = int8_interface(out, io_ranges(model, samples))
    if not _has_integer_weights(out):
        raise ModelError(f"{scheme} quantized no tensor (float16 weights? decompose them first)")
    _verify(out, scheme, static and int8_io, samples[:1])
    return out


def override_ranges(qsvs: dict, ranges: Mapping[str, tuple[float, float]]) -> dict:
    """The quantizer's calibration result with the min/max of the named tensors replaced."""
    out = dict(qsvs)
    for name, (lo, hi) in ranges.items():
        if name in out and "min" in out[name] and "max" in out[name]:
            old = out[name]
            out[name] = {**old, "min": np.full_like(np.asarray(old["min"]), lo),
                         "max": np.full_like(np.asarray(old["max"]), hi)}
    return out


def check_calibration(model_t: Any, calib: list[dict[str, np.ndarray]] | None,
                      ) -> list[dict[str, np.ndarray]]:
    """The samples, each checked against the signature's inputs (names, shapes, dtypes)."""
    if not calib:
        raise CalibrationError("static_int8 needs calibration samples (none given)")
    _, sig_inputs, _ = tm.signature_io(model_t)
    tensors = model_t.subgraphs[0].tensors
    for i, sample in enumerate(calib):
        if not isinstance(sample, Mapping):
            raise CalibrationError(f"calibration sample {i} is a {type(sample).__name__}, "
                                   f"not a dict of input name -> array")
        extra = sorted(set(sample) - set(sig_inputs))
        if extra:
            raise CalibrationError(f"calibration sample {i} has unknown input '{extra[0]}' "
                                   f"(model inputs: {', '.join(sig_inputs)})")
        for name, t in sig_inputs.items():
            _check_array(i, name, sample.get(name), tensors[t])
    return [dict(s) for s in calib]


def _check_array(i: int, name: str, value: Any, tensor: Any) -> None:
    if value is None:
        raise CalibrationError(f"calibration sample {i} has no input '{name}'")
    arr = np.asarray(value)
    dims = [
        int(d)
        for d in (tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape)
    ]
    dtype = tm.tensor_type_name(tensor.type)
    fits = arr.ndim == len(dims) and all(d in (-1, s) for d, s in zip(dims, arr.shape, strict=True))
    if not fits or arr.dtype.name != dtype:
        raise CalibrationError(f"calibration input '{name}' (sample {i}): expected {dtype} "
                               f"{_fmt(dims)}, got {arr.dtype.name} {_fmt(arr.shape)}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise CalibrationError(f"calibration input '{name}' (sample {i}) contains NaN or inf")


def _make_quantizer(model: bytes, model_t: Any, scheme: str, float_ops: Iterable[int],
                    float_io: bool, int8_op_types: frozenset[str] = frozenset()) -> Any:
    from ai_edge_quantizer import quantizer, recipe

    regexes = float_op_regexes(model_t, float_ops)
    rules = list(getattr(recipe, _RECIPES[scheme])())
    rules += [{**recipe.static_wi8_ai8()[0], "operation": op} for op in sorted(int8_op_types)]
    try:
        q = quantizer.Quantizer(bytes(model), rules)
        for regex in regexes:
            q.update_quantization_recipe(regex, "*", None, _NO_QUANTIZE)
        if float_io:
            q.update_quantization_recipe(".*", "INPUT", None, _NO_QUANTIZE)
            q.update_quantization_recipe(".*", "OUTPUT", None, _NO_QUANTIZE)
    except Exception as exc:  # the quantizer parses the model itself and raises its own errors
        raise ModelError(f"ai-edge-quantizer cannot read the model ({scheme}): "
                         f"{_first_line(exc)}") from None
    return q


def float_op_regexes(model_t: Any, float_ops: Iterable[int]) -> list[str]:
    """One anchored regex per op index, matching exactly that op's ai-edge-quantizer scope."""
    from ai_edge_quantizer.utils.tfl_flatbuffer_utils import get_op_scope

    sg = model_t.subgraphs[0]
    regexes = []
    for i in sorted(set(float_ops)):
        if not 0 <= int(i) < len(sg.operators):
            raise ConfigError("no such op in subgraph 0", key="float_ops", value=i,
                              allowed=f"0..{len(sg.operators) - 1}")
        scope = get_op_scope(sg.operators[int(i)], sg.tensors)
        if not scope:
            raise ModelError(f"op {i} ({tm.op_name(model_t, sg.operators[int(i)])}) has no tensor "
                             "names; ai-edge-quantizer selects ops by output tensor name")
        regexes.append(f"^{re.escape(scope)}$")
    return regexes


def _calibrate(quantizer: Any, signature_key: str, samples: list[dict[str, np.ndarray]]) -> dict:
    try:
        with _quiet():
            return quantizer.calibrate({signature_key: samples}, num_threads=_CALIB_THREADS)
    except Exception as exc:  # the interpreter's ValueError/RuntimeError, the quantizer's own
        raise CalibrationError(
            f"ai-edge-quantizer calibration failed: {_first_line(exc)}"
        ) from None


@contextlib.contextmanager
def _quiet():
    """ai-edge-quantizer draws tqdm bars on stderr (the packer shows its own progress), and
    LiteRT warns that keeping all tensors is for debugging, which is what calibration does."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        yield


# --- full-integer interface ---------------------------------------------------------------

def int8_interface(model: bytes, ranges: Mapping[str, tuple[float, float]]) -> bytes:
    """Make every float32 graph input/output of subgraph 0 int8: a boundary QUANTIZE/DEQUANTIZE
    is removed; a float op at the boundary (an op left in float) gets a DEQUANTIZE before /
    QUANTIZE after it, with the range measured on the calibration samples (``ranges``:
    signature name -> (min, max), see ``io_ranges``)."""
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    _, sig_inputs, sig_outputs = tm.signature_io(model_t)
    names = {t: n for n, t in {**sig_inputs, **sig_outputs}.items()}
    changed = False
    for field, make in (("inputs", _int8_input), ("outputs", _int8_output)):
        for pos, t in enumerate(tm.ints(getattr(sg, field))):
            if tm.tensor_type_name(sg.tensors[t].type) == "float32":
                _retarget_io(model_t, field, pos, t, make(model_t, t, ranges.get(names.get(t, ""))))
                changed = True
    if not changed:
        return model
    tm.remove_unused(model_t)
    return tm.save(model_t)


def io_ranges(float_model: bytes,
              samples: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """{signature input/output name: (min, max)} of the float model over the samples."""
    runner = Runner(load_backend(float_model, "tflite"))
    ranges: dict[str, tuple[float, float]] = {}
    for sample in samples:
        outs = runner([sample[s.name] for s in runner.inputs])
        for name, arr in [*sample.items(),
                          *zip((s.name for s in runner.outputs), outs, strict=True)]:
            lo, hi = ranges.get(name, (np.inf, -np.inf))
            ranges[name] = (min(lo, float(np.min(arr))), max(hi, float(np.max(arr))))
    return ranges


def _int8_input(model_t: Any, t: int, rng: tuple[float, float] | None) -> int:
    sg = model_t.subgraphs[0]
    users = tm.consumers(model_t, t)
    if len(users) == 1 and tm.op_name(model_t, sg.operators[users[0]]) == "QUANTIZE":
        new = int(sg.operators[users[0]].outputs[0])
        if tm.tensor_type_name(sg.tensors[new].type) == "int8":
            del sg.operators[users[0]]
            return new
    tensor = sg.tensors[t]
    scale, zp = _int8_params(tm.tensor_name(tensor), rng)
    new = tm.add_tensor(model_t, tm.tensor_name(tensor), tensor.shape, np.int8, scale=[scale],
                        zero_point=[zp])
    tensor.name = f"{tm.tensor_name(tensor)}_dequantized".encode()
    tm.insert_op(model_t, "DEQUANTIZE", [new], [t], 0, version=2)
    return new


def _int8_output(model_t: Any, t: int, rng: tuple[float, float] | None) -> int:
    sg = model_t.subgraphs[0]
    prod = tm.producer(model_t, t)
    if prod is not None and tm.op_name(model_t, sg.operators[prod]) == "DEQUANTIZE" \
            and not tm.consumers(model_t, t):
        src = int(sg.operators[prod].inputs[0])
        if tm.tensor_type_name(sg.tensors[src].type) == "int8":
            del sg.operators[prod]
            return src
    tensor = sg.tensors[t]
    scale, zp = _int8_params(tm.tensor_name(tensor), rng)
    new = tm.add_tensor(model_t, tm.tensor_name(tensor), tensor.shape, np.int8, scale=[scale],
                        zero_point=[zp])
    tensor.name = f"{tm.tensor_name(tensor)}_float".encode()
    tm.insert_op(model_t, "QUANTIZE", [t], [new], len(sg.operators), version=1)
    return new


def _int8_params(name: str, rng: tuple[float, float] | None) -> tuple[float, int]:
    """Asymmetric int8 scale/zero point of a range, computed as ai-edge-quantizer does."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize.uniform_quantize_tensor import (
        tensor_zp_scale_from_min_max,
    )

    if rng is None:
        raise ModelError(f"cannot make '{name}' int8: no measured range for it")
    zp, scale = tensor_zp_scale_from_min_max(np.asarray([rng[0]]), np.asarray([rng[1]]), 8, False,
                                             qtyping.QuantGranularity.TENSORWISE)
    return float(np.ravel(scale)[0]), int(np.ravel(zp)[0])


def _retarget_io(model_t: Any, field: str, pos: int, old: int, new: int) -> None:
    sg = model_t.subgraphs[0]
    ios = tm.ints(getattr(sg, field))
    ios[pos] = new
    setattr(sg, field, np.asarray(ios, dtype=np.int32))
    for sig in model_t.signatureDefs or []:
        if sig.subgraphIndex == 0:
            for m in sig.inputs if field == "inputs" else sig.outputs:
                if int(m.tensorIndex) == old:
                    m.tensorIndex = new


# --- verification -------------------------------------------------------------------------

def float_compute_ops(model: bytes) -> frozenset[str]:
    """Names of the op types that compute in float32 (QUANTIZE/DEQUANTIZE aside)."""
    model_t = tm.load(model)
    sg = model_t.subgraphs[0]
    return frozenset(tm.op_name(model_t, op) for op in sg.operators or []
                     if tm.op_name(model_t, op) not in ("QUANTIZE", "DEQUANTIZE")
                     and any(tm.tensor_type_name(sg.tensors[t].type) == "float32"
                             for t in tm.ints(op.outputs)))


def _has_integer_weights(model: bytes) -> bool:
    model_t = tm.load(model)
    return any(tm.tensor_type_name(t.type) in ("int8", "int4") and t.buffer
               and model_t.buffers[t.buffer].data is not None
               for sg in model_t.subgraphs for t in sg.tensors)


def _verify(model: bytes, scheme: str, int8_io: bool, samples: list[dict[str, np.ndarray]]) -> None:
    """A quantizer's success is not evidence: load and run the result in LiteRT."""
    try:
        runner = Runner(load_backend(model, "tflite"))
        inputs = [samples[0][s.name] if samples and s.name in samples[0]
                  else np.zeros(s.shape, dtype=np.float32) for s in runner.inputs]
        outs = runner(inputs)
    except EdgekitError as exc:
        raise ModelError(f"{scheme} result does not run in LiteRT: {exc}") from None
    if not all(np.all(np.isfinite(o)) for o in outs):
        raise ModelError(f"{scheme} result produces non-finite outputs in LiteRT")
    if int8_io:
        bad = [
            s.name for s in runner.inputs + runner.outputs
            if s.dtype not in ("int8", "int16") or s.scale is None
        ]
        if bad:
            raise ModelError(f"{scheme} result is not full-integer: '{bad[0]}' is not a quantized "
                             "int8 tensor")


# --- sensitivity ----------------------------------------------------------------------------

def tensor_sqnr(float_model: bytes, quant_model: bytes,
                calib: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """{tensor name: SQNR dB of the quantized model's tensor vs the float model's} over the
    samples, for every float activation (and graph input) both models have by name."""
    calib = check_calibration(tm.load(float_model), calib)
    f_run, q_run = _TensorTap(float_model), _TensorTap(quant_model)
    names = [n for n, d in f_run.activations.items()
             if np.dtype(d["dtype"]).kind == "f" and n in q_run.activations]
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    for sample in calib:
        f_vals, q_vals = f_run(sample, names), q_run(sample, names)
        for n in names:
            a, b = f_vals[n], q_vals[n]
            if a.shape == b.shape:
                signal[n] += float(np.sum(a.astype(np.float64) ** 2))
                noise[n] += float(np.sum((a.astype(np.float64) - b) ** 2))
    return {n: _db(signal[n], noise[n]) for n in names}


def op_sensitivity(float_model: bytes, quant_model: bytes,
                   calib: list[dict[str, np.ndarray]]) -> list[tuple[int, str, float]]:
    """[(op index, op name, SQNR dB of the op's output in the quantized model)] for the ops of
    the float model's subgraph 0 in execution order (ops whose output cannot be matched by name
    in the quantized model are left out)."""
    sqnr = tensor_sqnr(float_model, quant_model, calib)
    return [(i, name, out_db) for i, name, _, out_db in _op_table(float_model, sqnr)]


def fallback_order(float_model: bytes, quant_model: bytes,
                   calib: list[dict[str, np.ndarray]]) -> list[int]:
    """Op indices, the op that adds the most quantization noise first; the order in which to
    move ops to float. Noise powers add, so an op's own share is its output's noise-to-signal
    ratio minus its inputs' (linear, not dB: a 14 dB drop at 56 dB matters far less than a
    10 dB drop at 24 dB)."""
    sqnr = tensor_sqnr(float_model, quant_model, calib)
    table = _op_table(float_model, sqnr)
    added = {i: _nsr(out_db) - _nsr(in_db) for i, _, in_db, out_db in table}
    return sorted(added, key=lambda i: (-added[i], i))


def _nsr(db: float) -> float:
    return float(10.0 ** (-db / 10.0))


def _op_table(float_model: bytes, sqnr: dict[str, float]) -> list[tuple[int, str, float, float]]:
    """(op index, op name, worst input SQNR, output SQNR) for ops with a measured output."""
    model_t = tm.load(float_model)
    sg = model_t.subgraphs[0]
    rows = []
    for i, op in enumerate(sg.operators or []):
        outs = [
            sqnr[n]
            for n in (tm.tensor_name(sg.tensors[t]) for t in tm.ints(op.outputs))
            if n in sqnr
        ]
        if not outs:
            continue
        ins = [sqnr.get(tm.tensor_name(sg.tensors[t]), _MAX_DB) for t in tm.ints(op.inputs)
               if t >= 0 and tm.tensor_array(model_t, t) is None]
        rows.append((i, tm.op_name(model_t, op), min(ins, default=_MAX_DB), min(outs)))
    return rows


class _TensorTap:
    """A LiteRT interpreter that keeps every intermediate tensor, read back as float."""

    def __init__(self, model: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        try:
            with _quiet():
                self.it = Interpreter(model_content=bytes(model),
                                      experimental_preserve_all_tensors=True,
                                      experimental_op_resolver_type=(
                                          OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
            self.it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"TFLite cannot load the model: {_first_line(exc)}") from None
        model_t = tm.load(model)
        key, self.sig_inputs, _ = tm.signature_io(model_t)
        details = {d["index"]: d for d in self.it.get_tensor_details()}
        sg = model_t.subgraphs[0]
        produced = {t for op in sg.operators or [] for t in tm.ints(op.outputs)} | set(
            tm.ints(sg.inputs)
        )
        self.activations = {tm.tensor_name(sg.tensors[t]): details[t] for t in produced
                            if t in details and np.dtype(details[t]["dtype"]).kind in "fi"}

    def __call__(self, sample: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        for name, t in self.sig_inputs.items():
            self.it.set_tensor(t, quantize(sample[name], _spec(self.it, t)))
        try:
            self.it.invoke()
        except RuntimeError as exc:
            raise ModelError(f"TFLite invoke failed: {_first_line(exc)}") from None
        return {n: _as_float(self.it.get_tensor(self.activations[n]["index"]), self.activations[n])
                for n in names}


def _spec(it: Any, t: int) -> TensorSpec:
    d = next(d for d in it.get_input_details() if d["index"] == t)
    scale, zp = d["quantization"]
    quantized = bool(scale) and np.dtype(d["dtype"]).kind in "iu"
    return TensorSpec(d["name"], tuple(d["shape"]), np.dtype(d["dtype"]).name,
                      float(scale) if quantized else None, int(zp) if quantized else None)


def _as_float(value: np.ndarray, detail: dict) -> np.ndarray:
    q = detail.get("quantization_parameters", {})
    scales = np.asarray(q.get("scales", []), dtype=np.float64)
    if value.dtype.kind == "f" or scales.size == 0:
        return value.astype(np.float64)
    zps = np.asarray(q.get("zero_points", np.zeros_like(scales)), dtype=np.float64)
    if scales.size > 1:  # per-channel: broadcast along the quantized dimension
        shape = [1] * value.ndim
        shape[int(q.get("quantized_dimension", 0))] = scales.size
        scales, zps = scales.reshape(shape), zps.reshape(shape)
    return (value.astype(np.float64) - zps) * scales


def _db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return _MAX_DB
    if signal <= 0.0:
        return -_MAX_DB
    return float(min(_MAX_DB, 10.0 * np.log10(signal / noise)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _fmt(shape: Any) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"

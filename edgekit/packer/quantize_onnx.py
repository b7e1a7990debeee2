"""ONNX compression and quantization through onnxruntime.quantization (and numpy for weights)."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import Dataset
from ..errors import CalibrationError, ModelError
from ..onnx_model import parse_onnx
from . import compress
from .recipes import Recipe

WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}  # op -> weight input index
MIN_FP16_ELEMENTS = 16  # tiny constants (shapes, scalars) stay float32


def apply_recipe(data: bytes, recipe: Recipe, calib: Dataset | None,
                 exclude_nodes: Sequence[str] = ()) -> tuple[bytes, dict[str, Any]]:
    """The candidate model for ``recipe`` and facts about what was done."""
    stats: dict[str, Any] = {}
    if recipe.sparsity or recipe.clusters:
        data, stats = compress_weights(data, recipe.sparsity, recipe.clusters)
    q = recipe.quantization
    if q == "none":
        return data, stats
    if q == "fp16":
        return fp16_weights(data), stats
    if q == "dynamic_int8":
        return _with_files(data, _dynamic), stats
    if q == "static_int8":
        if calib is None:
            raise CalibrationError(
                "static int8 needs calibration data (--calib, or --synthetic-calib)"
            )
        quantized = _with_files(data, lambda i, o: _static(i, o, calib, recipe.calibration,
                                                              exclude_nodes, recipe.per_channel))
        return quantized, {**stats, "excluded_nodes": list(exclude_nodes)}
    if q in ("weight_int4", "weight_int8"):
        return weight_only(data, 4 if q == "weight_int4" else 8), stats
    raise ModelError(f"recipe {recipe.name} has no ONNX implementation")


def weight_initializers(model: Any) -> dict[str, Any]:
    """Initializers that are the weight input of Conv/Gemm/MatMul (what pruning may touch)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        idx = WEIGHT_OPS.get(node.op_type)
        if idx is not None and len(node.input) > idx and node.input[idx] in inits:
            out[node.input[idx]] = inits[node.input[idx]]
    return out


def compress_weights(data: bytes, sparsity: float, clusters: int) -> tuple[bytes, dict[str, Any]]:
    from onnx import numpy_helper


    model = parse_onnx(data)
    inits = weight_initializers(model)
    weights = {n: numpy_helper.to_array(t).astype(np.float32) for n, t in inits.items()}
    if sparsity:
        weights = compress.prune_global(weights, sparsity)
    if clusters:
        weights = {n: compress.cluster(w, clusters) for n, w in weights.items()}
    for name, tensor in inits.items():
        tensor.CopyFrom(numpy_helper.from_array(weights[name], name))
    total = sum(w.size for w in weights.values())
    zeros = sum(int(np.sum(w == 0)) for w in weights.values())
    return model.SerializeToString(), {"weights": total,
                                       "weight_sparsity": round(zeros / max(total, 1), 4),
                                       "clusters": clusters}


def fp16_weights(data: bytes) -> bytes:
    """float32 initializers stored as float16 and Cast back to float32: half the file, same
    compute."""
    from onnx import TensorProto, helper, numpy_helper

    model = parse_onnx(data)
    casts = []
    for init in list(model.graph.initializer):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < MIN_FP16_ELEMENTS:
            continue
        arr = numpy_helper.to_array(init).astype(np.float16)
        stored = f"{init.name}__fp16"
        model.graph.initializer.remove(init)
        model.graph.initializer.append(numpy_helper.from_array(arr, stored))
        casts.append(helper.make_node("Cast", [stored], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__cast"))
    for i, node in enumerate(casts):
        model.graph.node.insert(i, node)
    return model.SerializeToString()


def _with_files(data: bytes, fn) -> bytes:
    """ORT's quantizers work on paths; give them a private temp folder."""
    with tempfile.TemporaryDirectory(prefix="edgekit-q-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(data)
        try:
            with _quiet():
                fn(src, dst)
        except (CalibrationError, ModelError):
            raise
        except Exception as exc:  # onnxruntime.quantization raises bare Exceptions
            raise ModelError(
                f"onnxruntime quantization failed: {str(exc).splitlines()[0][:200]}"
            ) from None
        return dst.read_bytes()


def _dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)


@contextlib.contextmanager
def _quiet():
    """ORT's quantizers print progress and log advice on the root logger; keep our output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


class _Reader:
    """onnxruntime CalibrationDataReader over a Dataset."""

    def __init__(self, calib: Dataset) -> None:
        self._feeds = iter(calib.feeds())

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def __iter__(self):  # qdq_loss_debug iterates instead of calling get_next
        return self._feeds


def _static(src: Path, dst: Path, calib: Dataset, method: str, exclude: Sequence[str],
            per_channel: bool = True) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = src.with_name("pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimisation; quantize the original if it fails
        pre = src
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    quantize_static(pre, dst, _Reader(calib), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=methods[method], nodes_to_exclude=list(exclude) or None,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                   "CalibPercentile": 99.999})


def weight_only(data: bytes, bits: int) -> bytes:
    """Block-wise int4/int8 weights for MatMul/Gemm (MatMulNBits); other ops stay float."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = parse_onnx(_gemm_to_matmul(data))
    try:
        quant = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=True,
                                     op_types_to_quantize=("MatMul",))
        quant.process()
    except Exception as exc:  # the quantizer raises bare Exceptions
        raise ModelError(
            f"int{bits} weight quantization failed: {str(exc).splitlines()[0][:200]}"
        ) from None
    out = quant.model.model
    if not any(n.op_type == "MatMulNBits" for n in out.graph.node):
        raise ModelError(f"int{bits} weights: the model has no MatMul/Gemm weights to quantize")
    return out.SerializeToString()


def _gemm_to_matmul(data: bytes) -> bytes:
    """Gemm(A, W, b) with constant W → MatMul + Add, which MatMulNBits can quantize."""
    from onnx import helper, numpy_helper

    model = parse_onnx(data)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
        )
        if node.op_type != "Gemm" or node.input[1] not in inits or not plain:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        w_name = f"{node.input[1]}__kn"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        mm_out = node.output[0] if len(node.input) < 3 else f"{node.output[0]}__mm"
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out],
                                      name=f"{node.name}_matmul"))
        if len(node.input) > 2:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                          name=f"{node.name}_bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    for init in list(model.graph.initializer):
        if init.name not in used:
            model.graph.initializer.remove(init)
    return model.SerializeToString()


def sensitive_nodes(float_model: bytes, qdq_model: bytes, calib: Dataset,
                    limit: int = 16) -> list[str]:
    """Float-model node names ordered by how much int8 hurts their output (worst first).

    Uses onnxruntime's own QDQ debugging tools: run both models with intermediate outputs
    exposed and compute, per activation, the SQNR between the float tensor and the
    dequantized int8 tensor.
    """
    from onnxruntime.quantization import qdq_loss_debug as dbg

    model = parse_onnx(float_model)
    sub = Dataset(calib.inputs, tuple(a[:limit] for a in calib.arrays))
    with tempfile.TemporaryDirectory(prefix="edgekit-dbg-") as tmp, _quiet():
        try:
            errors = _activation_errors(dbg, Path(tmp), float_model, qdq_model, sub)
        except Exception as exc:  # the debugging helpers raise bare Exceptions
            raise ModelError(
                f"per-layer sensitivity failed: {str(exc).splitlines()[0][:200]}"
            ) from None
    sqnr = {
        t: min(float(np.mean(e["xmodel_err"])), 100.0)
        for t, e in errors.items()
        if "xmodel_err" in e
    }
    # A node's own harm is the SQNR it loses between its inputs and its output; ranking by the
    # output's SQNR alone would blame whatever comes last for all the error before it.
    drops = []
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or node.output[0] not in sqnr:
            continue
        before = min((sqnr[i] for i in node.input if i in sqnr), default=100.0)
        drops.append((before - sqnr[node.output[0]], node.name))
    return [name for _, name in sorted(drops, reverse=True)]


def _activation_errors(dbg: Any, tmp: Path, float_model: bytes, qdq_model: bytes,
                       data: Dataset) -> dict[str, dict[str, Any]]:
    acts = {}
    for tag, blob in (("float", float_model), ("qdq", qdq_model)):
        src, aug = tmp / f"{tag}.onnx", tmp / f"{tag}_aug.onnx"
        src.write_bytes(blob)
        dbg.modify_model_output_intermediate_tensors(str(src), str(aug))
        acts[tag] = dbg.collect_activations(str(aug), _Reader(data))
    return dbg.compute_activation_error(dbg.create_activation_matching(acts["qdq"], acts["float"]))

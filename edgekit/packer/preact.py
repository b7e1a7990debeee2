"""Fidelity before a final sigmoid/softmax: measure the model, not the squashing.

A sigmoid output that sits at 0 … 1e-5 makes SQNR meaningless: float runtimes disagree at
~21 dB in that tail and an int8 output rounds it all to 0. So for each output produced by a final
Sigmoid/Softmax (through Q/DQ, casts, shape ops and a mean), an evaluation copy of the model also returns the
activation's input; its SQNR is reported beside the output's and the packer decides on it. A
softmax does not see a shift of its logits, so they are compared centred (each row minus its
mean): a constant offset is no error. An output the calibration data leaves saturated is reported
as such.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import Fidelity, OutputFidelity

from ..dataset import Dataset
from ..errors import EdgekitError
from ..onnx_model import parse_onnx
from .evaluate import cosine, make_runner, run_all, sqnr_db

ONNX_ACTIVATIONS = {"Sigmoid": "sigmoid", "Softmax": "softmax"}
TFLITE_ACTIVATIONS = {"LOGISTIC": "sigmoid", "SOFTMAX": "softmax"}
# what may sit between the activation and the output: Q/DQ, casts, shape ops, an average
_ONNX_PASS = ("QuantizeLinear", "DequantizeLinear", "Cast", "Identity", "Reshape", "Squeeze",
              "Unsqueeze", "Flatten", "Transpose", "ReduceMean")
_TFLITE_PASS = ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE",
                "MEAN")
SATURATED_FRACTION = 0.95  # this share of values pinned at the rails: the output is saturated
RAIL = 1e-3


@dataclass(frozen=True)
class Probe:
    """A copy of the model that also returns the input of each final activation."""

    model: bytes
    activations: dict[str, str]  # output name -> sigmoid | softmax
    names: tuple[str, ...]  # the model's outputs, in order (the probe returns them first)

    @property
    def n_outputs(self) -> int:
        return len(self.names)

    def judged(self, outs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """What fidelity is judged on, from ``outs`` (what ``model`` returned): the model's
        outputs, each one behind a final activation replaced by its decision signal."""
        judged = list(outs[:self.n_outputs])
        for k, (name, act) in enumerate(self.activations.items()):
            judged[self.names.index(name)] = decision_signal(act, outs[self.n_outputs + k])
        return judged


def probe_model(model: bytes, fmt: str, output_names: Sequence[str]) -> Probe | None:
    """None when no output comes from a final sigmoid/softmax."""
    if fmt == "onnx":
        return _probe_onnx(model, output_names)
    return _probe_tflite(model, output_names)


def _probe_onnx(data: bytes, names: Sequence[str]) -> Probe | None:
    from onnx import helper

    model = parse_onnx(data)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    acts: dict[str, str] = {}
    extra = []
    for name, out in zip(names, g.output):
        node = producer.get(out.name)
        while node is not None and node.op_type in _ONNX_PASS:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in ONNX_ACTIVATIONS and _last_axis(node, model, out):
            acts[name] = ONNX_ACTIVATIONS[node.op_type]
            extra.append(node.input[0])
    if not acts:
        return None
    g.output.extend(helper.make_empty_tensor_value_info(t) for t in extra)
    return Probe(model.SerializeToString(), acts, tuple(names))


def _last_axis(node: Any, model: Any, out: Any) -> bool:
    """A Softmax over the last axis (what centring assumes; TFLite's SOFTMAX always is)."""
    if node.op_type != "Softmax":
        return True
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
    rank = len(out.type.tensor_type.shape.dim)
    return axis == -1 or (rank > 0 and axis == rank - 1)


def _probe_tflite(data: bytes, names: Sequence[str]) -> Probe | None:
    from ..tflite import model as tfl

    m = tfl.load(data)
    sg = m.subgraphs[0]
    acts: dict[str, str] = {}
    extra = []
    for name, t in zip(names, tfl.ints(sg.outputs)):
        op_i = tfl.producer(m, t)
        while op_i is not None and tfl.op_name(m, sg.operators[op_i]) in _TFLITE_PASS:
            op_i = tfl.producer(m, tfl.ints(sg.operators[op_i].inputs)[0])
        if op_i is not None and tfl.op_name(m, sg.operators[op_i]) in TFLITE_ACTIVATIONS:
            acts[name] = TFLITE_ACTIVATIONS[tfl.op_name(m, sg.operators[op_i])]
            extra.append(tfl.ints(sg.operators[op_i].inputs)[0])
    if not acts:
        return None
    sg.outputs = np.asarray([*tfl.ints(sg.outputs), *extra], dtype=np.int32)
    return Probe(tfl.save(m), acts, tuple(names))


def pre_activation_outputs(model: bytes, fmt: str, names: Sequence[str], data: Dataset,
                           backend: Mapping[str, Any] | None = None) -> dict[str, np.ndarray] | None:
    """Output name -> the input of its final activation over ``data`` (None: no such output,
    or the copy cannot run). ``backend``: load_backend options for the copy."""
    probe = probe_model(model, fmt, names)
    if probe is None:
        return None
    try:
        outs = run_all(make_runner(probe.model, fmt, **(backend or {})), data)
    except EdgekitError:
        return None
    return {name: decision_signal(probe.activations[name], out)
            for name, out in zip(probe.activations, outs[probe.n_outputs:], strict=True)}


def decision_signal(activation: str, logits: np.ndarray) -> np.ndarray:
    """What fidelity is judged on before ``activation``: softmax logits centred along the class
    axis (softmax(x + c) == softmax(x)), sigmoid logits as they are."""
    if activation != "softmax":
        return logits
    x = logits.astype(np.float64)
    return x - x.mean(axis=-1, keepdims=True)


@dataclass(frozen=True)
class PreActivation:
    """The float model's pre-activation outputs on the evaluation data, computed once."""

    names: tuple[str, ...]
    reference: dict[str, np.ndarray]
    activations: dict[str, str]

    @classmethod
    def of(cls, model: bytes, fmt: str, names: Sequence[str],
           data: Dataset) -> PreActivation | None:
        probe = probe_model(model, fmt, names)
        ref = pre_activation_outputs(model, fmt, names, data) if probe else None
        return cls(tuple(names), ref, probe.activations) if ref else None

    def add_to(self, fid: Fidelity, model: bytes, fmt: str, data: Dataset,
               backend: Mapping[str, Any] | None = None) -> Fidelity:
        got = pre_activation_outputs(model, fmt, self.names, data, backend) or {}
        pre = {name: OutputFidelity(sqnr_db=sqnr_db(ref, got[name].reshape(ref.shape)),
                                    cosine=cosine(ref, got[name].reshape(ref.shape)))
               for name, ref in self.reference.items() if name in got}
        return replace(fid, pre_activation=pre,
                       final_activation={n: self.activations[n] for n in pre})

def saturated_outputs(names: Sequence[str], outputs: Sequence[np.ndarray],
                      activations: dict[str, str]) -> list[str]:
    """One warning per activated output the data leaves pinned at its rails."""
    warnings = []
    for name, out in zip(names, outputs):
        kind = activations.get(name)
        if kind is None:
            continue
        if kind == "sigmoid":
            pinned = float(np.mean((out < RAIL) | (out > 1 - RAIL)))
            what = f"of its sigmoid values within {RAIL:g} of 0 or 1"
        else:
            pinned = float(np.mean(out.reshape(-1, out.shape[-1]).max(axis=1) > 1 - RAIL))
            what = f"of its softmax rows with one class above {1 - RAIL:g}"
        if pinned >= SATURATED_FRACTION:
            warnings.append(f"output {name!r} stays saturated on the calibration data "
                            f"({pinned * 100:.1f} % {what}): its SQNR after the activation says "
                            f"little, so fidelity is judged before it; calibration data that "
                            f"exercises this output would test it better")
    return warnings

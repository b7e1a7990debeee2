"""Model inputs that are not plain float tensors: constants, integers, recurrent state, and
graphs with control flow.

- ``--input-value NAME=VALUE`` freezes an input (a sample rate, a flag) into the graph as a
  constant; the doctor's simplifier can then fold the branches it selected.
- A rank-0 input is static (its shape is ``[]``), not dynamic.
- Integer inputs keep their values: generated data cannot stand in for them.
- ``--state IN=OUT`` (or an obvious pair such as ``state``/``stateN``) is recurrent state: the
  float model is run over the samples in order and each step's OUT becomes the next step's IN,
  so calibration and evaluation see the states the model really meets.
- ``If``/``Loop``/``Scan`` run in ONNX Runtime on CPU targets; TFLite-only targets refuse them
  by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import TensorSpec

from ..dataset import Dataset
from ..errors import CalibrationError, ConfigError, ModelError
from ..onnx_model import parse_onnx

CONTROL_FLOW_OPS = ("If", "Loop", "Scan")
# Output names that carry an input's state to the next call: "<in>N", "<in>_out", ...
_STATE_SUFFIXES = ("N", "_out", "_next", "_new", "n", "out")

InputValue = int | float | Sequence[float] | np.ndarray


# --- constants ------------------------------------------------------------------------------

def freeze_input_values(data: bytes, values: Mapping[str, InputValue]) -> tuple[bytes, list[str]]:
    """Each named ONNX input becomes an initializer holding the given value (in its dtype)."""
    if not values:
        return data, []
    from onnx import numpy_helper

    from .ingest import onnx_value_spec

    model = parse_onnx(data)
    graph = model.graph
    by_name = {v.name: v for v in graph.input}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ConfigError("names no model input", key="--input-value", value=unknown[0],
                          allowed=[v.name for v in graph.input])
    steps = []
    for name, value in values.items():
        spec = onnx_value_spec(by_name[name])
        arr = typed_value(spec, value)
        graph.input.remove(by_name[name])
        graph.initializer.append(numpy_helper.from_array(arr, name))
        steps.append(f"froze input {name} = {_short(arr)} ({spec.dtype}, --input-value)")
    return model.SerializeToString(), steps


def typed_value(spec: TensorSpec, value: InputValue) -> np.ndarray:
    """``value`` as an array of the input's dtype and shape (a scalar fills a static shape)."""
    dtype = np.dtype(spec.dtype)
    arr = np.asarray(value)
    if dtype.kind in "iub" and arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise ConfigError(f"input {spec.name!r} is {dtype.name}", key="--input-value",
                          value=f"{spec.name}={_short(arr)}")
    shape = tuple(spec.shape)
    if arr.shape != shape:
        if any(d < 0 for d in shape) or arr.size != 1:
            raise ConfigError(f"input {spec.name!r} has shape {list(shape)}", key="--input-value",
                              value=f"{spec.name}={_short(arr)}")
        arr = np.full(shape, arr.reshape(()))
    return arr.astype(dtype)


def _short(arr: np.ndarray) -> str:
    return str(arr.reshape(()).item()) if arr.size == 1 else f"array{list(arr.shape)}"


def check_generated_inputs(inputs: Sequence[TensorSpec], skip: Sequence[str] = ()) -> None:
    """Generated data is uniform [0, 1) floats: wrong for an integer input (a sample rate, an
    index), whose value selects what the model does."""
    for spec in inputs:
        if spec.name not in skip and np.dtype(spec.dtype).kind in "iub":
            raise CalibrationError(
                f"input {spec.name!r} is {spec.dtype}: generated data cannot stand in for it; "
                f"give --input-value {spec.name}=VALUE or real data (--calib)")


# --- recurrent state ------------------------------------------------------------------------

def state_pairs(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                given: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
    """The (input, output) state pairs: ``given`` (checked), else the obvious ones by name."""
    ins, outs = {s.name: s for s in inputs}, {s.name: s for s in outputs}
    for src, dst in given:
        if src not in ins:
            raise ConfigError("names no model input", key="--state", value=f"{src}={dst}",
                              allowed=list(ins))
        if dst not in outs:
            raise ConfigError("names no model output", key="--state", value=f"{src}={dst}",
                              allowed=list(outs))
        if not _same_kind(ins[src], outs[dst]):
            raise ConfigError(f"input {src} {list(ins[src].shape)} and output {dst} "
                              f"{list(outs[dst].shape)} differ", key="--state",
                              value=f"{src}={dst}")
    if given:
        return tuple(given)
    found = []
    for name, spec in ins.items():
        match = next((outs[name + s] for s in _STATE_SUFFIXES if name + s in outs), None)
        if match is not None and _same_kind(spec, match) and np.dtype(spec.dtype).kind == "f":
            found.append((name, match.name))
    return tuple(found)


def _same_kind(a: TensorSpec, b: TensorSpec) -> bool:
    known = all(d > 0 for d in (*a.shape, *b.shape))
    return a.dtype == b.dtype and (not known or tuple(a.shape) == tuple(b.shape))


def with_fed_back_state(data: Dataset, inputs: Sequence[TensorSpec],
                        outputs: Sequence[TensorSpec], pairs: Sequence[tuple[str, str]],
                        runner: Any) -> Dataset:
    """``data`` (samples of the non-state inputs, in order) completed with the state each step
    of the float model hands to the next; the first step starts from zeros."""
    out_index = {s.name: i for i, s in enumerate(outputs)}
    state_of = dict(pairs)
    given = {s.name: a for s, a in zip(data.inputs, data.arrays, strict=True)}
    state = {name: np.zeros(_sample(spec), np.dtype(spec.dtype)) for spec in inputs
             if (name := spec.name) in state_of}
    per_input: dict[str, list[np.ndarray]] = {s.name: [] for s in inputs}
    for i in range(len(data)):
        feed = [given[s.name][i] if s.name in given else state[s.name] for s in inputs]
        for spec, arr in zip(inputs, feed, strict=True):
            per_input[spec.name].append(arr)
        result = runner([a.reshape(s.shape).astype(s.dtype, copy=False)
                         for a, s in zip(feed, inputs, strict=True)])
        for src, dst in state_of.items():
            state[src] = np.asarray(result[out_index[dst]]).reshape(state[src].shape)
    arrays = tuple(np.stack(per_input[s.name]) for s in inputs)
    return Dataset(tuple(inputs), arrays, data.synthetic, data.source)


def _sample(spec: TensorSpec) -> tuple[int, ...]:
    return tuple(spec.shape[1:]) if spec.shape and spec.shape[0] == 1 else tuple(spec.shape)


# --- control flow ---------------------------------------------------------------------------

def control_flow_nodes(data: bytes) -> list[tuple[str, str]]:
    """(op type, node name) of every If/Loop/Scan in an ONNX graph, nested graphs included."""
    return [(n.op_type, n.name or f"#{i}") for i, n in enumerate(_nodes(parse_onnx(data).graph))
            if n.op_type in CONTROL_FLOW_OPS]


def _nodes(graph: Any) -> Iterator[Any]:
    from onnx import AttributeProto

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def check_control_flow(data: bytes, fmt: str, family: Any, target: str) -> list[str]:
    """Doctor steps for a CPU target; a precise refusal for a target that runs TFLite only."""
    found = control_flow_nodes(data) if fmt == "onnx" else []
    if not found:
        return []
    op, node = found[0]
    what = f"{op} node {node!r}" + (f" and {len(found) - 1} more control-flow op(s)"
                                    if len(found) > 1 else "")
    if "onnx" not in family.MODEL_FORMATS:
        raise ModelError(f"the model uses control flow ({what}); {target} runs TFLite only, and "
                         f"ONNX→TFLite conversion cannot take {op}. Pack it for a CPU target "
                         f"(e.g. rpi4, x86-64), where it runs in ONNX Runtime, or freeze the "
                         f"input that selects the branch with --input-value NAME=VALUE")
    _check_loads(data, op)
    return [f"kept ONNX for ONNX Runtime: the model uses control flow ({what})"]


def _check_loads(data: bytes, op: str) -> None:
    """ONNX Runtime type-checks every branch against the frozen input shapes, also branches a
    given input never takes (e.g. the 8 kHz path of a 16 kHz model): say what fixes that."""
    from .evaluate import make_runner

    try:
        make_runner(data, "onnx")
    except ModelError as exc:
        raise ModelError(f"{exc}; with frozen input shapes every {op} branch must fit them: "
                         f"freeze the input that selects the branch with --input-value "
                         f"NAME=VALUE (e.g. sr=16000)") from None

"""Split execution (Neurosurgeon-style): run the head of a model on the device, ship the cut
tensor, run the tail on a worker, and pick the cut for the link as it is now.

:func:`profile` cuts an ONNX model at every candidate tensor (one tensor carries everything
from the head to the tail, found on the topologically sorted graph), extracts head and tail
with ``onnx.utils.Extractor``, and measures both parts with ONNX Runtime on this host. Two
degenerate cuts are always there: ``server-only`` (the input travels) and ``device-only``
(nothing travels). :func:`choose` picks the cut with the least expected latency for a link::

    expected = device_factor * head_ms + [RTT + (cut bytes + output bytes) * 8 / bandwidth]
               + server_factor * tail_ms

``device_factor``/``server_factor`` scale host-measured times to the two machines (a device's
figure comes from its telemetry or its target profile). With ``int8=True`` the cut tensor
travels as int8 with a per-tensor scale (a quarter of the bytes; :func:`quantize_cut`).
:func:`frontier` drops cuts not worth shipping, :func:`split_variants` turns the profile into
bundle variants (head and tail per cut, with the
cut's size and each part's latency as evidence) for the packer to add to a bundle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit_agent.bundle.manifest import ModelRef, RecipeStep, TensorSpec, Variant, sha256_hex
from edgekit_agent.errors import ModelError
from edgekit_agent.service.split import dequantize_cut, quantize_cut  # noqa: F401 (the wire form)

SERVER_ONLY, DEVICE_ONLY = "server-only", "device-only"
_ELEMENT_BYTES = {1: 4, 10: 2, 11: 8, 3: 1, 2: 1, 6: 4, 7: 8}  # onnx.TensorProto dtypes


@dataclass(frozen=True)
class Cut:
    name: str            # the tensor cut at, or SERVER_ONLY / DEVICE_ONLY
    cut_bytes: int       # float size of what travels (0 for device-only)
    head_ms: float       # measured on this host
    tail_ms: float
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class SplitProfile:
    input_name: str
    output_name: str
    output_bytes: int
    cuts: tuple[Cut, ...]


@dataclass(frozen=True)
class LinkState:
    bandwidth_bps: float
    rtt_ms: float = 2.0


def candidate_cuts(model: Any) -> list[str]:
    """Tensors that alone carry everything the rest of the graph needs (in graph order)."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    consumers_left: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name and name not in constants:
                consumers_left[name] = consumers_left.get(name, 0) + 1
    live = {i.name for i in graph.input if i.name not in constants}
    cuts = []
    for node in list(graph.node)[:-1]:
        for name in node.input:
            if name in consumers_left:
                consumers_left[name] -= 1
                if consumers_left[name] == 0:
                    live.discard(name)
        live.update(o for o in node.output if consumers_left.get(o, 0) > 0)
        if len(live) == 1:
            cuts.append(next(iter(live)))
    return cuts


def extract(model: Any, inputs: list[str], outputs: list[str]) -> Any:
    """The sub-model from ``inputs`` to ``outputs`` (shapes inferred first: the cut needs them)."""
    import onnx.shape_inference
    import onnx.utils

    try:
        if not model.graph.value_info:
            model = onnx.shape_inference.infer_shapes(model)
        return onnx.utils.Extractor(model).extract_model(inputs, outputs)
    except Exception as exc:  # onnx raises plain exceptions for unknown names or cycles
        raise ModelError(f"cannot cut the model at {inputs} -> {outputs}: {exc}") from None


def profile(model: Any, sample: np.ndarray, *, runs: int = 30) -> SplitProfile:
    """Head/tail latency and cut size at every candidate cut, measured with ONNX Runtime."""
    import onnx

    model = onnx.shape_inference.infer_shapes(model)
    input_name, output_name = model.graph.input[0].name, model.graph.output[0].name
    shapes = _shapes(model)
    full_ms = _measure(model, {input_name: sample}, runs)
    out_bytes = _nbytes(shapes[output_name])
    cuts = [Cut(SERVER_ONLY, _nbytes(shapes[input_name]), 0.0, full_ms, shapes[input_name][1])]
    feed = {input_name: sample}
    for name in candidate_cuts(model):
        head = extract(model, [input_name], [name])
        tail = extract(model, [name], [output_name])
        mid = _session(head).run(None, feed)[0]
        cuts.append(Cut(name, int(mid.nbytes), _measure(head, feed, runs),
                        _measure(tail, {name: mid}, runs), tuple(mid.shape)))
    cuts.append(Cut(DEVICE_ONLY, 0, full_ms, 0.0))
    return SplitProfile(input_name, output_name, out_bytes, tuple(cuts))


def expected_ms(p: SplitProfile, cut: Cut, link: LinkState, *, device_factor: float = 1.0,
                server_factor: float = 1.0, int8: bool = False) -> float:
    if cut.name == DEVICE_ONLY:
        return device_factor * cut.head_ms
    travels = (cut.cut_bytes // 4 + 8 if int8 and cut.name != SERVER_ONLY else cut.cut_bytes)
    transfer = link.rtt_ms + (travels + p.output_bytes) * 8.0 / link.bandwidth_bps * 1e3
    return device_factor * cut.head_ms + transfer + server_factor * cut.tail_ms


def choose(p: SplitProfile, link: LinkState, **factors: Any) -> tuple[Cut, float]:
    """The cut with the least expected latency on ``link``, and that latency."""
    return min(((c, expected_ms(p, c, link, **factors)) for c in p.cuts), key=lambda ce: ce[1])


def frontier(p: SplitProfile) -> SplitProfile:
    """The cuts worth shipping: in graph order, each real cut must carry fewer bytes than every
    earlier one. A later cut with no fewer bytes moves work to the device and saves no transfer,
    which never pays while the device is no faster than the server (why it offloads at all)."""
    kept, smallest = [], None
    for cut in p.cuts:
        if cut.name in (SERVER_ONLY, DEVICE_ONLY):
            kept.append(cut)
        elif smallest is None or cut.cut_bytes < smallest:
            kept.append(cut)
            smallest = cut.cut_bytes
    return SplitProfile(p.input_name, p.output_name, p.output_bytes, tuple(kept))


def split_variants(model: Any, p: SplitProfile) -> list[tuple[Variant, bytes]]:
    """Head and tail of every real cut as bundle variants ``split<i>-head``/``split<i>-tail``."""
    out = []
    for i, cut in enumerate(c for c in p.cuts if c.name not in (SERVER_ONLY, DEVICE_ONLY)):
        for part, ins, outs, ms in (("head", p.input_name, cut.name, cut.head_ms),
                                    ("tail", cut.name, p.output_name, cut.tail_ms)):
            sub = extract(model, [ins], [outs])
            data = sub.SerializeToString()
            name = f"split{i}-{part}"
            shapes = _shapes(sub)
            step = RecipeStep("split", f"{part} of the cut at {cut.name}",
                              {"cut": cut.name, "part": part, "cut_bytes": cut.cut_bytes,
                               "head_ms": cut.head_ms, "tail_ms": cut.tail_ms})
            variant = Variant(name=name, model=ModelRef(f"{name}.onnx", "onnx", sha256_hex(data),
                                                        len(data)),
                              inputs=(TensorSpec(ins, shapes[ins][1], "float32"),),
                              outputs=(TensorSpec(outs, shapes[outs][1], "float32"),),
                              recipe=(step,), latency_ms=round(ms, 4))
            out.append((variant, data))
    return out


# --- measurement ---------------------------------------------------------------------------------

def _session(model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _measure(model: Any, feed: dict[str, np.ndarray], runs: int) -> float:
    session = _session(model)
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def _shapes(model: Any) -> dict[str, tuple[int, tuple[int, ...]]]:
    """name -> (element type, static shape) for inputs, outputs and inferred intermediates."""
    out = {}
    for info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        t = info.type.tensor_type
        out[info.name] = (t.elem_type, tuple(max(d.dim_value, 1) for d in t.shape.dim))
    return out


def _nbytes(spec: tuple[int, tuple[int, ...]]) -> int:
    elem, shape = spec
    return _ELEMENT_BYTES.get(elem, 4) * int(np.prod(shape, dtype=np.int64))

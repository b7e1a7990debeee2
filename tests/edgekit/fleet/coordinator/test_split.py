"""Split execution on a generated CNN: at three simulated bandwidths the planner picks three
different cuts, each within 10 % of the best cut found by running them all; the cut tensor may
travel int8; head and tail ship as bundle variants the agent runs."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.fleet.coordinator import split
from edgekit_agent.bundle.manifest import Manifest, ModelRef, Variant, sha256_hex
from edgekit_agent.service.agent import Agent

from .cnn import make_cnn

pytestmark = pytest.mark.host
DEVICE_FACTOR = 50.0  # an MCU-class device against this host as the server
LINKS = {"slow": split.LinkState(1e6, 1.0), "medium": split.LinkState(50e6, 1.0),
         "fast": split.LinkState(1e9, 1.0)}


@pytest.fixture(scope="module")
def cnn():
    model = make_cnn()
    sample = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    return model, sample, split.profile(model, sample, runs=30)


def _measured_cut(model, sample, p, cut) -> split.Cut:
    """Run the cut for real (fresh sessions, head then tail): its measured head and tail times."""
    if cut.name in (split.SERVER_ONLY, split.DEVICE_ONLY):
        full = split._measure(model, {p.input_name: sample}, 30)
        head, tail = (0.0, full) if cut.name == split.SERVER_ONLY else (full, 0.0)
    else:
        head_model = split.extract(model, [p.input_name], [cut.name])
        mid = split._session(head_model).run(None, {p.input_name: sample})[0]
        head = split._measure(head_model, {p.input_name: sample}, 30)
        tail = split._measure(split.extract(model, [cut.name], [p.output_name]), {cut.name: mid}, 30)
    return split.Cut(cut.name, cut.cut_bytes, head, tail)


def _steadiest(cuts: list[split.Cut]) -> split.Cut:
    """The least loaded of repeated measurements of one cut (load on a shared machine only
    ever adds time)."""
    return min(cuts, key=lambda c: c.head_ms + c.tail_ms)


def test_three_bandwidths_three_cuts_each_near_the_best(cnn):
    model, sample, p = cnn
    assert len(p.cuts) >= 8 and {c.name for c in p.cuts} >= {split.SERVER_ONLY, split.DEVICE_ONLY}
    measured = {c.name: _steadiest([_measured_cut(model, sample, p, c) for _ in range(3)])
                for c in p.cuts}
    chosen = {}
    for label, link in LINKS.items():
        cut, predicted = split.choose(p, link, device_factor=DEVICE_FACTOR)
        tried = {n: split.expected_ms(p, m, link, device_factor=DEVICE_FACTOR)
                 for n, m in measured.items()}
        best = min(tried.values())
        print(f"{label}: chose {cut.name} (predicted {predicted:.2f} ms, measured "
              f"{tried[cut.name]:.2f} ms), best {min(tried, key=tried.get)} {best:.2f} ms; "
              f"device-only {tried[split.DEVICE_ONLY]:.2f}, server-only {tried[split.SERVER_ONLY]:.2f}")
        assert tried[cut.name] <= 1.10 * best
        chosen[label] = cut.name
    assert len(set(chosen.values())) == 3, chosen
    assert chosen["slow"] == split.DEVICE_ONLY and chosen["fast"] == split.SERVER_ONLY


def test_int8_cut_tensor(cnn):
    model, sample, p = cnn
    cut = next(c for c in p.cuts if c.name not in (split.SERVER_ONLY, split.DEVICE_ONLY)
               and c.cut_bytes == min(x.cut_bytes for x in p.cuts if x.cut_bytes))
    head = split._session(split.extract(model, [p.input_name], [cut.name]))
    tail = split._session(split.extract(model, [cut.name], [p.output_name]))
    mid = head.run(None, {p.input_name: sample})[0]
    q, scale, zp = split.quantize_cut(mid)
    assert q.nbytes == mid.nbytes // 4
    out = tail.run(None, {cut.name: split.dequantize_cut(q, scale, zp)})[0]
    ref = split._session(model).run(None, {p.input_name: sample})[0]
    cosine = float(np.dot(out.ravel(), ref.ravel()) / np.linalg.norm(out) / np.linalg.norm(ref))
    assert cosine > 0.999, cosine
    link = split.LinkState(20e6, 1.0)
    assert (split.expected_ms(p, cut, link, device_factor=DEVICE_FACTOR, int8=True)
            < split.expected_ms(p, cut, link, device_factor=DEVICE_FACTOR))


def test_head_and_tail_are_bundle_variants_the_agent_runs(cnn, tmp_path, write_bundle_file):
    model, sample, p = cnn
    variants = split.split_variants(model, p)
    assert len(variants) == 2 * (len(p.cuts) - 2)
    full = model.SerializeToString()
    head, tail = variants[2][0], variants[3][0]  # the second cut
    assert head.recipe[0].params["cut"] == tail.inputs[0].name == head.outputs[0].name
    primary = Variant(name="full", model=ModelRef("model.onnx", "onnx", sha256_hex(full), len(full)),
                      inputs=head.inputs, outputs=tail.outputs)
    manifest = Manifest(name="cnn", version="1", target="x86-64", family="cpu", primary=primary,
                        variants=tuple(v for v, _ in variants), members=(),
                        source={"format": "onnx", "size_bytes": len(full)})
    files = [("model.onnx", full, "model")] + [(v.model.path, d, "variant") for v, d in variants]
    bundle = write_bundle_file(tmp_path / "cnn.ekb", manifest, files)
    with Agent(bundle, variant=head.name) as device, Agent(bundle, variant=tail.name) as server, \
            Agent(bundle) as whole:
        mid = device.infer({p.input_name: sample})[head.outputs[0].name]
        out = server.infer({tail.inputs[0].name: mid})[p.output_name]
        np.testing.assert_allclose(out, whole.infer({p.input_name: sample})[p.output_name],
                                   rtol=1e-4, atol=1e-5)

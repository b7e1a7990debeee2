"""Agent.infer against hand-written interpreter calls, validation, variants, stats, failures."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgekit_agent.errors import BundleError, InputError, RuntimeBackendError
from edgekit_agent.service.agent import Agent
from edgekit_agent.store.slots import BundleStore


def _litert(model: bytes):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    it.allocate_tensors()
    return it, it.get_input_details()[0], it.get_output_details()[0]


def test_float_tflite_equals_direct_interpreter(bundle_factory, models, images):
    it, inp, out = _litert(models["tflite"])
    agent = Agent(bundle_factory("tflite"))
    for i in range(len(images)):
        it.set_tensor(inp["index"], images[i:i + 1])
        it.invoke()
        want = it.get_tensor(out["index"])
        got = agent.infer({"image": images[i:i + 1]})["logits"]
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_int8_model_quantizes_and_dequantizes_like_hand_code(bundle_factory, models, images):
    it, inp, out = _litert(models["int8"])
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    assert inp["dtype"] == np.int8 and s_in > 0
    agent = Agent(bundle_factory("int8"))
    assert agent.inputs[0].dtype == "int8" and agent.inputs[0].scale == pytest.approx(s_in)
    for i in range(len(images)):
        q = np.clip(np.round(images[i:i + 1] / s_in) + z_in, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], q)
        it.invoke()
        want = (it.get_tensor(out["index"]).astype(np.float32) - z_out) * np.float32(s_out)
        got = agent.infer([images[i:i + 1]])["logits"]
        assert np.array_equal(got, want)
    # and the int8 model still classifies like the float one on most images
    float_agent = Agent(bundle_factory("tflite"))
    agree = np.mean([np.argmax(agent.infer(images[i])["logits"]) ==
                     np.argmax(float_agent.infer(images[i])["logits"]) for i in range(len(images))])
    assert agree >= 0.9


def test_mcu_bundle_runs_on_tflite_micro_like_its_interpreter(tmp_path, bundle_factory, models, images,
                                                               agent_cli):
    from tflite_micro.python.tflite_micro import runtime as tflm

    it = tflm.Interpreter.from_bytes(models["int8"])
    agent = Agent(bundle_factory("int8", family="mcu"))
    spec_in, spec_out = agent.inputs[0], agent.outputs[0]
    for i in range(4):
        q = np.clip(np.round(images[i:i + 1] / spec_in.scale) + spec_in.zero_point, -128, 127)
        it.set_input(q.astype(np.int8), 0)
        it.invoke()
        want = (it.get_output(0).astype(np.float32) - spec_out.zero_point) * np.float32(spec_out.scale)
        assert np.array_equal(agent.infer(images[i])["logits"], want)
    # and the CLI output stays clean of the interpreter's native chatter
    store = tmp_path / "s"
    assert agent_cli("install", bundle_factory("int8", family="mcu"), "--store", store).returncode == 0
    np.save(tmp_path / "x.npy", images[0])
    p = agent_cli("infer", "--store", store, "--input", tmp_path / "x.npy")
    assert p.returncode == 0 and p.stderr == "" and p.stdout.startswith("logits [1, 10] argmax=")


def test_onnx_equals_onnxruntime(bundle_factory, models, images):
    import onnxruntime as ort

    sess = ort.InferenceSession(models["onnx"], providers=["CPUExecutionProvider"])
    agent = Agent(bundle_factory("onnx"))
    want = sess.run(None, {"image": images[:1]})[0]
    assert np.array_equal(agent.infer({"image": images[:1]})["logits"], want)
    # float64 nested lists (what the HTTP API hands over) give the same answer
    assert np.array_equal(agent.infer({"image": images[:1].astype(np.float64).tolist()})["logits"], want)


def test_missing_batch_dim_is_added(bundle_factory, images):
    agent = Agent(bundle_factory("tflite"))
    assert np.array_equal(agent.infer(images[3])["logits"], agent.infer(images[3:4])["logits"])


@pytest.mark.parametrize("inputs, fragment", [
    ({"imag": "x"}, "unknown input(s) 'imag'; missing input(s) 'image'"),
    ({}, "missing input(s) 'image'"),
    ({"image": np.zeros((1, 8, 8, 1)), "extra": 1}, "unknown input(s) 'extra'"),
    ({"image": np.zeros((2, 8, 8, 1), np.float32)}, "shape [2, 8, 8, 1] does not match [1, 8, 8, 1]"),
    ({"image": np.zeros((8, 8), np.float32)}, "shape [8, 8]"),
    ({"image": np.full((1, 8, 8, 1), "a")}, "dtype <U1 not accepted"),
    ({"image": np.zeros((1, 8, 8, 1), np.complex64)}, "dtype complex64"),
    ({"image": [[1.0, 2.0], [3.0]]}, "not a rectangular numeric array"),
    ([np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1))], "model takes 1 inputs (image), got 2"),
    ("image", "inputs must be a mapping"),
])
def test_bad_inputs_are_rejected_with_a_reason(bundle_factory, inputs, fragment):
    agent = Agent(bundle_factory("tflite"))
    with pytest.raises(InputError) as err:
        agent.infer(inputs)
    assert fragment in str(err.value)
    s = agent.stats()
    assert (s["rejected"], s["count"], s["errors"]) == (1, 0, 0)


def test_integer_input_rejects_floats(bundle_factory):
    agent = Agent(bundle_factory("gather"))
    assert agent.infer({"idx": np.array([2])})["y"].tolist() == [[6.0, 7.0, 8.0]]
    with pytest.raises(InputError, match="dtype float64 not accepted \\(expected int64\\)"):
        agent.infer({"idx": np.array([2.0])})


def test_variants_threads_and_reload(tmp_path, bundle_factory, images):
    store = BundleStore(tmp_path / "s")
    store.install(bundle_factory("tflite", version="1", variants=("int8", "onnx")))
    agent = Agent(store, threads=1)
    x = images[:1]
    primary = agent.infer(x)["logits"]
    agent.set_variant("int8")
    assert agent.variant == "int8" and agent.inputs[0].dtype == "int8"
    int8 = agent.infer(x)["logits"]
    assert not np.array_equal(int8, primary) and np.argmax(int8) == np.argmax(primary)
    with pytest.raises(BundleError, match="no variant 'huge' \\(has: primary, int8, onnx\\)"):
        agent.set_variant("huge")
    assert agent.variant == "int8"  # a refused switch changes nothing
    agent.set_threads(2)
    assert agent.threads == 2 and agent.variant == "int8"
    assert np.array_equal(agent.infer(x)["logits"], int8)
    with pytest.raises(InputError, match="threads"):
        agent.set_threads(0)

    old_id = agent.bundle_id
    store.install(bundle_factory("tflite", version="2"))  # has no int8 variant
    assert agent.bundle_id == old_id  # nothing changes until reload
    assert agent.reload() != old_id
    assert agent.manifest.version == "2" and agent.variant == "primary" and agent.threads == 2
    assert np.array_equal(agent.infer(x)["logits"], primary)
    agent.close()


def test_stats_count_latency_and_rate(bundle_factory, images):
    agent = Agent(bundle_factory("tflite"))
    t0 = time.perf_counter()
    for i in range(50):
        agent.infer(images[i % len(images)])
    loop = time.perf_counter() - t0
    with pytest.raises(InputError):
        agent.infer({"nope": 1})
    s = agent.stats()
    assert (s["count"], s["errors"], s["rejected"], s["window"]) == (50, 0, 1, 50)
    lat = s["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] < loop * 1e3
    assert 0 < s["busy_s"] <= loop
    assert 0 < s["inferences_per_s"] <= 50 / loop * 1.01
    assert s["bundle_id"] == agent.bundle_id and s["variant"] == "primary"


def test_latency_window_bounds_memory_and_rate_uses_it(bundle_factory, images):
    agent = Agent(bundle_factory("tflite"), latency_window=16, rate_window_s=60)
    t0 = time.perf_counter()
    for _ in range(40):
        agent.infer(images[0])
    loop = time.perf_counter() - t0
    s = agent.stats()
    assert s["count"] == 40 and s["window"] == 16
    # the rate comes from the 16 kept end times, so it reflects the loop's pace, not uptime
    assert s["inferences_per_s"] >= 40 / loop * 0.3


def test_runtime_errors_count_and_roll_back_after_n(tmp_path, bundle_factory, images):
    store = BundleStore(tmp_path / "s", max_failures=3, failure_window_s=60)
    store.install(bundle_factory("tflite", version="1"))
    store.install(bundle_factory("gather", version="2", name="gather"))
    agent = Agent(store)
    assert agent.infer({"idx": np.array([3])})["y"].tolist() == [[9.0, 10.0, 11.0]]
    for n in (1, 2):
        with pytest.raises(RuntimeBackendError, match="inference failed") as err:
            agent.infer({"idx": np.array([7])})
        assert "\n" not in str(err.value)
        assert agent.stats()["errors"] == n and agent.manifest.name == "gather"
    with pytest.raises(RuntimeBackendError):
        agent.infer({"idx": np.array([7])})
    # third failure within the window: the store rolled back and the agent reloaded
    assert agent.manifest.name == "digits" and agent.manifest.version == "1"
    assert agent.infer(images[0])["logits"].shape == (1, 10)
    assert store.status().last_event["automatic"] is True
    agent.close()


def test_bundle_path_that_is_neither_file_nor_store(tmp_path):
    with pytest.raises(BundleError, match="neither a bundle store folder nor a bundle file"):
        Agent(tmp_path / "missing")

"""A/B bundle store: install, rollback, refusals that keep the previous bundle, crash safety."""

from __future__ import annotations

import json
import signal
import time
import zipfile

import numpy as np
import pytest

from edgekit_agent.bundle.manifest import bundle_id
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.bundle.signing import generate_keypair
from edgekit_agent.errors import StoreError
from edgekit_agent.service.agent import Agent
from edgekit_agent.store.durable import CRASH_HOOK_ENV
from edgekit_agent.store.slots import INSTALL_STEPS, BundleStore


def _id(path) -> str:
    return bundle_id(open_bundle(path).manifest)


@pytest.fixture(scope="module")
def v1(bundle_factory):
    return bundle_factory(version="1")


@pytest.fixture(scope="module")
def v2(bundle_factory):
    return bundle_factory(version="2", selftest=None)


@pytest.fixture(scope="module")
def v3(bundle_factory):
    return bundle_factory("int8", version="3")


def test_install_runs_vectors_then_rollback_swaps_slots(tmp_path, v1, v2):
    events = []
    store = BundleStore(tmp_path / "s", on_event=lambda kind, ev: events.append((kind, ev)))
    with pytest.raises(StoreError, match="no bundle installed"):
        store.active()
    r1 = store.install(v1)
    assert (r1.slot, r1.previous_bundle_id) == ("a", None)
    assert (r1.selftest.kind, r1.selftest.vectors) == ("vectors", 8)
    assert r1.selftest.max_abs_error == 0.0  # same interpreter, same inputs: bit-identical
    r2 = store.install(v2)
    assert (r2.slot, r2.previous_bundle_id, r2.selftest.kind) == ("b", r1.bundle_id, "smoke")
    assert bundle_id(store.active().manifest) == _id(v2) != _id(v1)
    assert bundle_id(store.previous().manifest) == _id(v1)

    assert store.rollback() == _id(v1)
    assert store.active().manifest.version == "1" and store.previous().manifest.version == "2"
    assert store.rollback() == _id(v2)  # and forward again
    assert [k for k, _ in events] == ["install", "install", "rollback", "rollback"]
    assert events[2][1]["from_bundle_id"] == _id(v2) and events[2][1]["automatic"] is False


@pytest.mark.parametrize("kind", ["tflite", "int8", "onnx"])
def test_selftest_vectors_along_the_batch_axis(tmp_path, bundle_factory, kind):
    result = BundleStore(tmp_path / "s").install(bundle_factory(kind, selftest="batch"))
    assert (result.selftest.kind, result.selftest.vectors) == ("vectors", 8)
    assert result.selftest.max_abs_error <= 1e-5


def test_third_install_reuses_the_older_slot(tmp_path, v1, v2, v3):
    store = BundleStore(tmp_path / "s")
    for b in (v1, v2, v3):
        store.install(b)
    assert store.active_slot() == "a" and store.active().manifest.version == "3"
    assert store.previous().manifest.version == "2"
    st = store.status()
    assert (st.active.version, st.previous.version, st.recent_failures) == ("3", "2", 0)


def _state_bytes(store: BundleStore) -> bytes:
    return (store.root / "state.json").read_bytes()


def _refused(store, bundle, *fragments, key=None) -> str:
    before_state, before_id = _state_bytes(store), bundle_id(store.active().manifest)
    with pytest.raises(StoreError) as err:
        store.install(bundle, key)
    msg = str(err.value)
    assert "previous bundle stays active" in msg and "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    assert _state_bytes(store) == before_state
    assert bundle_id(store.active().manifest) == before_id
    return msg


def test_bad_signature_unsigned_and_wrong_key_are_refused(tmp_path, keypair, bundle_factory, v1):
    priv, pub = keypair
    store = BundleStore(tmp_path / "s")
    store.install(bundle_factory(version="1", sign_key=priv), pub)
    other_priv, _ = generate_keypair(tmp_path / "other")
    _refused(store, bundle_factory(version="2", sign_key=other_priv), "signature does not match", key=pub)
    _refused(store, v1, "not signed", key=pub)
    # the store's own key applies when install() is given none
    keyed = BundleStore(tmp_path / "s", public_key=pub)
    _refused(keyed, bundle_factory(version="2", sign_key=other_priv), "signature")
    assert keyed.install(bundle_factory(version="2", sign_key=priv)).signature_checked


def test_failing_selftest_keeps_previous_and_frees_the_slot(tmp_path, bundle_factory, v1, v2):
    store = BundleStore(tmp_path / "s")
    store.install(v1)
    store.install(v2)
    msg = _refused(store, bundle_factory(version="9", selftest="bad"), "self-test failed", "vector 0",
                   "'logits' differs by up to")
    assert "allowed" in msg
    assert list(store.root.rglob("*.tmp")) == []  # the refused copy is not left behind
    assert store.previous().manifest.version == "1"  # the rollback target survived the refusal


def test_truncated_and_tampered_bundles_are_refused(tmp_path, v1, v2):
    store = BundleStore(tmp_path / "s")
    store.install(v1)
    data = v2.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        truncated = tmp_path / f"cut{cut}.ekb"
        truncated.write_bytes(data[:cut])
        _refused(store, truncated, "bundle refused")
    tampered = tmp_path / "tampered.ekb"
    with zipfile.ZipFile(v2) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename.startswith("model."):
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
            dst.writestr(info, body)
    _refused(store, tampered, "sha256 mismatch")
    _refused(store, tmp_path / "missing.ekb", "no such bundle file")


def test_failures_within_the_window_roll_back_once(tmp_path, v1, v2):
    store = BundleStore(tmp_path / "s", max_failures=3, failure_window_s=1.0)
    store.install(v1)
    store.install(v2)
    assert store.record_failure("x") is False and store.record_failure("x") is False
    time.sleep(1.1)  # those two fall out of the window
    assert [store.record_failure("boom") for _ in range(3)] == [False, False, True]
    assert store.active().manifest.version == "1"
    last = store.status().last_event
    assert last["automatic"] is True
    assert "3 failures within 1 s" in last["reason"] and "boom" in last["reason"]
    # v2 is now marked bad: failures of v1 do not bounce back to it
    assert [store.record_failure("again") for _ in range(3)] == [False, False, False]
    assert store.active().manifest.version == "1"
    assert store.status().recent_failures == 3


_START_AGENT = """
import os, signal, sys
from edgekit_agent.service.agent import Agent
a = Agent(sys.argv[1] if len(sys.argv) > 1 else {root!r})
print(a.manifest.version, flush=True)
{ending}
"""


def test_runs_killed_without_clean_stop_count_as_crashes(tmp_path, v1, v2, run_python):
    root = tmp_path / "s"
    store = BundleStore(root, max_failures=3)
    store.install(v1)
    store.install(v2)
    clean = run_python(_START_AGENT.format(root=str(root), ending="a.close()"))
    assert clean.returncode == 0 and clean.stdout.split() == ["2"]
    plain_exit = run_python(_START_AGENT.format(root=str(root), ending="pass"))  # finalizer at exit
    assert plain_exit.returncode == 0 and store.status().recent_failures == 0
    versions = []
    for _ in range(4):
        p = run_python(_START_AGENT.format(root=str(root), ending="os.kill(os.getpid(), signal.SIGKILL)"))
        assert p.returncode == -signal.SIGKILL
        versions.append(p.stdout.split()[0])
    # the 4th start sees the 3rd unclean run of v2 and rolls back before loading
    assert versions == ["2", "2", "2", "1"]
    assert store.status().last_event["event"] == "rollback"
    assert "ended without a clean stop" in store.status().last_event["reason"]


_INSTALL = "from edgekit_agent.store.slots import BundleStore; BundleStore({root!r}).install({bundle!r})"


@pytest.mark.parametrize("step", INSTALL_STEPS)
def test_kill_9_at_every_install_step_leaves_a_bootable_store(tmp_path, step, v1, v2, v3, run_python,
                                                             images):
    root = tmp_path / "s"
    store = BundleStore(root)
    store.install(v1)
    store.install(v2)
    p = run_python(_INSTALL.format(root=str(root), bundle=str(v3)), {CRASH_HOOK_ENV: step})
    assert p.returncode == -signal.SIGKILL, p.stderr

    reopened = BundleStore(root)
    expected = "3" if step == "switched" else "2"
    assert reopened.active().manifest.version == expected  # re-verified: hashes all match
    prev = reopened.previous()
    assert prev is None or prev.manifest.version in {"1", "2"}
    with Agent(reopened) as agent:
        assert agent.infer({"image": images[:1]})["logits"].shape == (1, 10)
    # the cut-off install left nothing that blocks the next one
    assert reopened.install(v3).bundle_id == _id(v3)
    assert reopened.active().manifest.version == "3"
    leftovers = [p.name for p in root.rglob("*.tmp")]
    assert leftovers == []
    assert json.loads((root / "state.json").read_text())["active"] in {"a", "b"}


def test_kill_9_during_first_install_leaves_an_empty_store(tmp_path, v1, run_python):
    root = tmp_path / "s"
    p = run_python(_INSTALL.format(root=str(root), bundle=str(v1)), {CRASH_HOOK_ENV: "copying"})
    assert p.returncode == -signal.SIGKILL
    store = BundleStore(root)
    with pytest.raises(StoreError, match="no bundle installed"):
        store.active()
    assert store.install(v1).slot == "a"


def test_corrupt_active_slot_rolls_back_on_start(tmp_path, v1, v2, images):
    store = BundleStore(tmp_path / "s")
    store.install(v1)
    store.install(v2)
    active_file = store.slot_path(store.active_slot())
    active_file.write_bytes(active_file.read_bytes()[:-100])  # bit rot / partial overwrite
    with Agent(store) as agent:
        assert agent.manifest.version == "1"
        out = agent.infer(images[:1])["logits"]
    assert np.isfinite(out).all()
    ev = store.status().last_event
    assert ev["event"] == "rollback" and "failed to load" in ev["reason"]

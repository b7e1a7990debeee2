"""Fuzzing the bundle reader: whatever the bytes, it refuses with an EdgekitError or reads the
bundle exactly as written — never another exception type, never a changed meaning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit_agent.bundle.manifest import sha256_hex
from edgekit_agent.bundle.reader import Bundle, open_bundle
from edgekit_agent.errors import EdgekitError

from .zipcraft import Parts, build

TINY_MODEL = bytes(range(256)) * 2   # a small member makes most mutations land in zip structure
FUZZ = settings(max_examples=int(os.environ.get("EDGEKIT_FUZZ_EXAMPLES", "300")), deadline=None,
                derandomize=bool(os.environ.get("CI")), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Reference:
    """A valid bundle, its bytes and what it means."""

    def __init__(self, path: Path, public_key: Path) -> None:
        self.data = path.read_bytes()
        self.public_key = public_key
        self.bundle = open_bundle(path, public_key)
        self.contents = {m.path: self.bundle.read(m.path) for m in self.bundle.manifest.members}

    def check(self, data: bytes, path: Path, with_key: bool = True) -> str:
        """'refused' or 'same'; fails the test on any other exception or a changed meaning."""
        path.write_bytes(data)
        try:
            bundle = open_bundle(path, self.public_key if with_key else None)
        except EdgekitError as exc:
            assert "\n" not in str(exc)
            return "refused"
        self.assert_same(bundle)
        return "same"

    def assert_same(self, bundle: Bundle) -> None:
        assert bundle.manifest == self.bundle.manifest
        assert {m.path: bundle.read(m.path) for m in bundle.manifest.members} == self.contents


@pytest.fixture(scope="module")
def tiny(make_bundle, keypair) -> Reference:
    return Reference(make_bundle(model=TINY_MODEL), keypair[1])


@pytest.fixture(scope="module")
def real(make_bundle, keypair) -> Reference:
    return Reference(make_bundle(), keypair[1])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "mutant.ekb"


@pytest.mark.parametrize("with_key", [True, False])
def test_every_single_byte_flip_is_refused_or_harmless(tiny, scratch, with_key):
    outcomes = {"refused": 0, "same": 0}
    for i in range(len(tiny.data)):
        mutant = bytearray(tiny.data)
        mutant[i] ^= 0xFF
        outcomes[tiny.check(bytes(mutant), scratch, with_key)] += 1
    # Harmless flips exist (timestamps, local-header copies of central fields); they must be few.
    assert outcomes["refused"] + outcomes["same"] == len(tiny.data)
    assert outcomes["refused"] > 0.75 * len(tiny.data), outcomes


def test_every_truncation_is_refused(tiny, scratch):
    for n in range(len(tiny.data)):
        assert tiny.check(tiny.data[:n], scratch) == "refused", n


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("overwrite"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=64)),
)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op, pos, *arg in ops:
        pos %= max(len(buf), 1)
        if op == "flip" and buf:
            buf[pos] ^= arg[0]
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = arg[0]
        elif op == "delete":
            del buf[pos:pos + arg[0]]
        elif op == "overwrite":
            buf[pos:pos + len(arg[0])] = arg[0]
    return bytes(buf)


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzzed_bytes_of_a_small_bundle(tiny, scratch, ops):
    tiny.check(mutate(tiny.data, ops), scratch)


@settings(FUZZ, max_examples=max(FUZZ.max_examples // 3, 10))
@given(ops=st.lists(mutation, min_size=1, max_size=3))
def test_fuzzed_bytes_of_the_digits_bundle(real, scratch, ops):
    real.check(mutate(real.data, ops), scratch)


# --- structure-aware: valid archives, signed, with a mutated manifest ---------------------------

# type confusion first: values that look right to a lenient reader (json.loads accepts Infinity/NaN)
tricky = st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -1, 0, True, False, "1",
                          "", [], {}, None, 1 << 64, [1, 8, 8, 1], {"path": "model.tflite"}])
json_values = tricky | st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


def paths_of(obj, prefix=()) -> list[tuple]:
    out = [prefix] if prefix else []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out += paths_of(v, (*prefix, k))
    return out


@pytest.fixture(scope="module")
def tiny_parts(tiny) -> Parts:
    parts = Parts(json.loads(tiny.bundle.manifest.to_json_bytes()))
    parts.files = dict(tiny.contents)
    return parts


@FUZZ
@given(data=st.data())
def test_fuzzed_manifest_fields_are_refused_or_well_typed(tiny_parts, keypair, scratch, data):
    parts = tiny_parts.copy()
    paths = paths_of(parts.manifest)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        *parents, last = data.draw(st.sampled_from(paths), label="path")
        target = parts.manifest
        try:
            for k in parents:
                target = target[k]
            action = data.draw(st.sampled_from(["replace", "delete"]), label="action")
            if action == "delete":
                del target[last]
            else:
                target[last] = data.draw(json_values, label="value")
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    scratch.write_bytes(build(parts, keypair[0]))
    try:
        bundle = open_bundle(scratch, keypair[1])
    except EdgekitError as exc:
        assert "\n" not in str(exc)
        return
    m = bundle.manifest
    assert sha256_hex(bundle.read_model()) == m.model.sha256
    assert all(isinstance(s, int) and not isinstance(s, bool) for t in m.primary.inputs for s in t.shape)
    assert all(isinstance(x.size_bytes, int) and x.size_bytes >= 0 for x in m.members)

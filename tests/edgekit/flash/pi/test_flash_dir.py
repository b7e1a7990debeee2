"""`edgekit flash BUNDLE --to dir://PATH`: the store on a "mounted card" is what the agent reads."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np

from edgekit_agent.bundle.reader import open_bundle


def _cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *map(str, args)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def _agent_status(store) -> dict:
    proc = subprocess.run(["edgekit-agent", "status", "--store", str(store), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_dir_flash_writes_a_store_the_agent_reports_active(tmp_path, packed_rpi4, rebundle, keypair):
    card = tmp_path / "card" / "var-lib-edgekit"
    card.parent.mkdir()
    proc = _cli("flash", packed_rpi4, "--to", f"dir://{card}", "--key", keypair[1], "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    status = _agent_status(card)
    assert status["active"]["bundle_id"] == result["active"]["id"]
    assert status["active"]["version"] == "1" and status["previous"] is None
    assert result["install"]["signature_checked"] is True

    v2 = rebundle(packed_rpi4, version="2")
    proc = _cli("flash", v2, "--to", f"dir://{card}")
    assert proc.returncode == 0, proc.stderr
    status = _agent_status(card)
    assert status["active"]["version"] == "2"
    assert status["previous"]["bundle_id"] == result["active"]["id"]
    assert proc.stdout.startswith(f"flashed {v2} to dir://{card}: active digits v2 (")


def test_dir_flash_refusals_leave_the_card_as_it_was(tmp_path, packed_rpi4, rebundle, cli_error):
    from edgekit_agent.bundle.signing import generate_keypair

    card = tmp_path / "card"
    assert _cli("flash", packed_rpi4, "--to", f"dir://{card}").returncode == 0
    before = (card / "state.json").read_bytes()
    _, other = generate_keypair(tmp_path / "other")
    cli_error(_cli("flash", packed_rpi4, "--to", f"dir://{card}", "--key", other), "signature")
    cli_error(_cli("flash", rebundle(packed_rpi4, version="9", bad_selftest=True), "--to", f"dir://{card}"),
              "self-test failed")
    cli_error(_cli("flash", rebundle(packed_rpi4, family="mcu", target="stm32h7"), "--to",
                   f"dir://{card}"), "mcu family", "serial://")
    cli_error(_cli("flash", tmp_path / "missing.ekb", "--to", f"dir://{card}"), "no such bundle")
    (tmp_path / "garbage.pub").write_text("not a key")
    cli_error(_cli("flash", packed_rpi4, "--to", f"dir://{card}", "--key", tmp_path / "garbage.pub"),
              "garbage.pub")
    assert (card / "state.json").read_bytes() == before
    assert sorted(p.name for p in card.rglob("*.tmp")) == []


def test_dir_flash_needs_a_mounted_parent(tmp_path, packed_rpi4, cli_error):
    cli_error(_cli("flash", packed_rpi4, "--to", f"dir://{tmp_path}/not-mounted/store"),
              "does not exist")


def test_dir_flash_installs_an_ethos_u_bundle_self_tested_on_its_host_form(tmp_path, keypair):
    bundle = tmp_path / "digits-u55.ekb"
    proc = _cli("pack", "example:digits.tflite", "--target", "ethos-u55-128", "-o", bundle,
                "--sign", keypair[0], timeout=300)
    assert proc.returncode == 0, proc.stderr
    card = tmp_path / "card"
    proc = _cli("flash", bundle, "--to", f"dir://{card}", "--key", keypair[1], "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    selftest = result["install"]["selftest"]
    assert selftest["kind"] == "vectors" and selftest["vectors"] == 4
    with np.load(io.BytesIO(open_bundle(bundle).read("selftest.npz"))) as npz:
        assert 0.0 <= selftest["max_abs_error"] <= float(npz["atol"])
    status = _agent_status(card)
    assert status["active"]["bundle_id"] == result["active"]["id"]
    assert status["active"]["name"] == "digits"

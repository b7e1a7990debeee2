"""`edgekit flash BUNDLE --to ssh://…` against a real sshd on loopback; the "device" is this
machine, so its store is read back with the real `edgekit-agent status`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from edgekit.flash.ssh import INCOMING
from edgekit_agent.bundle.signing import generate_keypair


def _flash(*args, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit.cli", "flash", *map(str, args)], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def _status(store: Path) -> dict:
    proc = subprocess.run(["edgekit-agent", "status", "--store", str(store), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_ssh_flash_installs_and_second_flash_keeps_the_first_as_previous(
        tmp_path, sshd, packed_rpi4, rebundle, keypair):
    store = tmp_path / "it's a store"  # a space and a quote: remote quoting must hold
    v2 = rebundle(packed_rpi4, version="2")
    first = _flash(packed_rpi4, "--to", sshd.uri(store), "--key", keypair[1], "--json", env=sshd.env())
    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout)
    assert one["scheme"] == "ssh" and one["bytes"] == packed_rpi4.stat().st_size
    assert one["install"]["signature_checked"] is True
    assert one["install"]["selftest"]["kind"] == "vectors" and one["install"]["selftest"]["vectors"] == 4
    status = _status(store)
    assert status["active"]["bundle_id"] == one["active"]["id"]
    assert (status["active"]["name"], status["active"]["version"]) == ("digits", "1")
    assert one["previous"] is None

    second = _flash(v2, "--to", sshd.uri(store), "--key", keypair[1], env=sshd.env())
    assert second.returncode == 0, second.stderr
    status = _status(store)
    assert second.stdout.strip() == (f"flashed {v2} to {sshd.uri(store)}: active digits v2 "
                                     f"({status['active']['bundle_id']})")
    assert status["active"]["version"] == "2"
    assert status["previous"]["bundle_id"] == one["active"]["id"]
    assert list((store / INCOMING).iterdir()) == []  # the uploaded temporaries are gone


def test_ssh_options_flag_works_without_edgekit_ssh(tmp_path, sshd, packed_rpi4):
    env = {k: v for k, v in sshd.env().items() if k != "EDGEKIT_SSH"}
    opts = [f"IdentityFile={sshd.user_key}", "IdentitiesOnly=yes", f"UserKnownHostsFile={sshd.known_hosts}",
            "StrictHostKeyChecking=yes"]
    args = [a for o in opts for a in ("--ssh-option", o)]
    proc = _flash(packed_rpi4, "--to", sshd.uri(tmp_path / "s"), *args, "--ssh-option", "LogLevel=ERROR",
                  env={**env, "HOME": str(tmp_path)})  # no ~/.ssh of the user's
    assert proc.returncode == 0, proc.stderr
    assert _status(tmp_path / "s")["active"]["name"] == "digits"


def test_unreachable_port_is_one_line_error_within_seconds(tmp_path, sshd, packed_rpi4, cli_error,
                                                           unused_port):
    # A refused port fails at once; what a loaded host adds is the CLI's own start-up, so the
    # fastest of up to three tries is judged (each must be the one-line error).
    elapsed = []
    for _ in range(3):
        t0 = time.monotonic()
        proc = _flash(packed_rpi4, "--to", sshd.uri(tmp_path / "s", port=unused_port),
                      "--timeout", "2", env=sshd.env())
        elapsed.append(time.monotonic() - t0)
        cli_error(proc, "Connection refused")
        if elapsed[-1] < 5:
            break
    assert min(elapsed) < 5, elapsed
    assert not (tmp_path / "s").exists()


def test_auth_failure_is_one_line_error(tmp_path, sshd, packed_rpi4, cli_error, stranger_key):
    proc = _flash(packed_rpi4, "--to", sshd.uri(tmp_path / "s"), env=sshd.env(identity=stranger_key))
    cli_error(proc, "Permission denied")
    assert not (tmp_path / "s").exists()


def test_agent_missing_on_device(tmp_path, sshd, packed_rpi4, cli_error):
    store = _installed_store(tmp_path, sshd, packed_rpi4)
    before = (store / "state.json").read_bytes()
    proc = _flash(packed_rpi4, "--to", sshd.uri(store), "--agent-cmd", "/nonexistent/edgekit-agent",
                  env=sshd.env())
    cli_error(proc, "not found on the device", "--agent-cmd")
    assert (store / "state.json").read_bytes() == before
    assert list((store / INCOMING).iterdir()) == []


def test_bad_signature_key_is_refused_and_store_unchanged(tmp_path, sshd, packed_rpi4, cli_error):
    store = _installed_store(tmp_path, sshd, packed_rpi4)
    before = (store / "state.json").read_bytes()
    _, other_pub = generate_keypair(tmp_path / "other")
    proc = _flash(packed_rpi4, "--to", sshd.uri(store), "--key", other_pub, env=sshd.env())
    cli_error(proc, "signature")
    assert (store / "state.json").read_bytes() == before


def test_device_refusal_is_reported_and_store_unchanged(tmp_path, sshd, packed_rpi4, rebundle, cli_error):
    """A bundle that verifies here but fails the device's self-test: the device says no."""
    store = _installed_store(tmp_path, sshd, packed_rpi4)
    before = (store / "state.json").read_bytes()
    bad = rebundle(packed_rpi4, version="3", bad_selftest=True)
    proc = _flash(bad, "--to", sshd.uri(store), env=sshd.env())
    cli_error(proc, "refused the bundle", "self-test failed")
    assert (store / "state.json").read_bytes() == before
    assert list((store / INCOMING).iterdir()) == []


def test_wrong_family_is_refused_before_connecting(tmp_path, sshd, packed_rpi4, rebundle, cli_error):
    store = _installed_store(tmp_path, sshd, packed_rpi4)
    before = (store / "state.json").read_bytes()
    mcu = rebundle(packed_rpi4, family="mcu", target="stm32h7")
    proc = _flash(mcu, "--to", sshd.uri(store), env=sshd.env())
    cli_error(proc, "mcu family", "serial://")
    assert (store / "state.json").read_bytes() == before


def test_progress_bar_on_stderr_for_a_big_bundle(tmp_path, sshd, packed_rpi4, rebundle):
    big = rebundle(packed_rpi4, version="4", extra_bytes=8 << 20)
    proc = _flash(big, "--to", sshd.uri(tmp_path / "s"), "--progress", env=sshd.env())
    assert proc.returncode == 0, proc.stderr
    assert "flash digits-4.ekb:" in proc.stderr and "100%" in proc.stderr
    assert "MB/s" in proc.stderr or "kB/s" in proc.stderr or "B/s" in proc.stderr
    assert big.stat().st_size > 8 << 20
    assert _status(tmp_path / "s")["active"]["version"] == "4"


def _installed_store(tmp_path: Path, sshd, bundle: Path) -> Path:
    store = tmp_path / "store"
    proc = _flash(bundle, "--to", sshd.uri(store), env=sshd.env())
    assert proc.returncode == 0, proc.stderr
    return store

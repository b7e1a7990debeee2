"""A real OpenSSH server on loopback for the flash tests, and real packed bundles.

The sshd (Debian openssh-server) runs as the current user with a throwaway host key and user
key. The remote `edgekit-agent` is found the way it is on a board: on the PATH of the ssh
session, set here with ``SetEnv PATH=…`` (the folder of the agent under test first). The
client side is configured only through ``EDGEKIT_SSH`` (``-F none``: the user's ~/.ssh never
takes part), with ``StrictHostKeyChecking=yes`` against a known_hosts holding the host key.
"""

from __future__ import annotations

import getpass
import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle_writer import MemberFile, write_bundle
from edgekit_agent.bundle.reader import open_bundle

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path


@dataclass
class Sshd:
    host: str
    port: int
    user: str
    user_key: Path
    known_hosts: Path
    proc: subprocess.Popen

    def env(self, identity: Path | None = None) -> dict[str, str]:
        """The client environment: EDGEKIT_SSH with our key and known_hosts only."""
        ssh = ["ssh", "-F", "none", "-i", str(identity or self.user_key), "-o", "IdentitiesOnly=yes",
               "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
               "-o", "LogLevel=ERROR"]
        return {**os.environ, "EDGEKIT_SSH": shlex.join(ssh)}

    def uri(self, store: Path | str, port: int | None = None) -> str:
        return f"ssh://{self.user}@{self.host}:{port or self.port}{store}"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Sshd:
    d = tmp_path_factory.mktemp("sshd")
    host_key, user_key = _keygen(d / "host_key"), _keygen(d / "user_key")
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port = free_port()
    agent = shutil.which("edgekit-agent")
    assert agent, "edgekit-agent is not installed (pip install -e ./agent)"
    path = ":".join(dict.fromkeys([str(Path(agent).parent), str(Path(sys.executable).parent),
                                   "/usr/local/bin", "/usr/bin", "/bin"]))
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nLogLevel ERROR\n"
        f"SetEnv PATH={path}\n")
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {(d / 'host_key.pub').read_text()}")
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "wb"))
    _wait_for_port(proc, port, d / "sshd.log")
    server = Sshd("127.0.0.1", port, getpass.getuser(), user_key, d / "known_hosts", proc)
    yield server
    proc.terminate()
    proc.wait(timeout=10)


def _wait_for_port(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("sshd did not open its port in 10 s")


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture
def stranger_key(tmp_path) -> Path:
    """A user key the sshd does not know."""
    return _keygen(tmp_path / "stranger")


@pytest.fixture(scope="session")
def packed_rpi4(tmp_path_factory, keypair) -> Path:
    """`edgekit pack example:digits --target rpi4 --sign KEY`, once per session, by the real CLI."""
    out = tmp_path_factory.mktemp("packed") / "digits-rpi4.ekb"
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "pack", "example:digits", "--target",
                           "rpi4", "-o", str(out), "--sign", str(keypair[0])],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def rebundle(tmp_path_factory, keypair) -> Callable[..., Path]:
    """rebundle(src, version=..., extra_bytes=0, bad_selftest=False, sign=True, **manifest_changes):
    the members of a real bundle written again by the real bundle writer with changes."""

    def make(src: Path, *, version: str | None = None, extra_bytes: int = 0,
             bad_selftest: bool = False, sign: bool = True, **changes: str) -> Path:
        b = open_bundle(src)
        m = b.manifest
        files = [MemberFile(mem.path, b.read(mem.path), mem.role) for mem in m.members]
        if bad_selftest:
            files = [_shifted_selftest(f) if f.path.endswith(".npz") else f for f in files]
        if extra_bytes:  # incompressible, so the archive really is that big
            noise = np.random.default_rng(0).bytes(extra_bytes)
            files.append(MemberFile("extra/noise.bin", noise, "extra"))
        manifest = m.replace(version=version or m.version, created="", **changes)
        out = tmp_path_factory.mktemp("rebundle") / f"{m.name}-{manifest.version}.ekb"
        return write_bundle(out, manifest, files, keypair[0] if sign else None)

    return make


def _shifted_selftest(f: MemberFile) -> MemberFile:
    with np.load(io.BytesIO(f.data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for k in arrays:
        if k.startswith("output_"):
            arrays[k] = arrays[k] + 1.0
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return MemberFile(f.path, buf.getvalue(), f.role)

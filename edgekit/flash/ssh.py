"""Flash over the user's own OpenSSH, as rsync and ansible do: ~/.ssh/config, keys, the agent,
known_hosts and ProxyJump all apply, and there is no second SSH stack to keep patched.

One connection does everything: a small POSIX ``sh`` script on the device receives the bundle on
stdin into a temporary file in ``STORE/incoming/``, checks its size, and runs the device's own
``edgekit-agent install`` (verification, A/B slots, self-test, rollback) and ``status --json``.
The temporary file (and the public key, when one is given) is removed whatever happens. Every
remote argument is quoted with ``shlex.quote``; each failure step has its own exit code so the
error says which step failed.

``EDGEKIT_SSH`` replaces the ``ssh`` command and may carry options (like ``RSYNC_RSH``), e.g.
``EDGEKIT_SSH="ssh -F none -i ~/.ssh/pi"``; ``--ssh-option OPT`` adds ``-o OPT``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shlex
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import FlashError
from .result import DeviceState

DEFAULT_AGENT_CMD = "edgekit-agent"
SSH_ENV = "EDGEKIT_SSH"
INCOMING = "incoming"
CHUNK = 256 << 10
INSTALL_TIMEOUT_S = 900.0
# exit codes of the remote script (255 is ssh's own)
NO_AGENT, WRITE_FAILED, TRUNCATED, REFUSED, NO_STATUS = 94, 91, 92, 93, 95
SSH_FAILED = 255


@dataclass(frozen=True)
class SshTarget:
    host: str
    store: str
    user: str | None = None
    port: int | None = None
    options: tuple[str, ...] = ()
    agent_cmd: str = DEFAULT_AGENT_CMD
    connect_timeout_s: float = 10.0

    @property
    def label(self) -> str:
        return (f"{self.user}@" if self.user else "") + self.host + (f":{self.port}" if self.port else "")


def ssh_command(target: SshTarget, remote_script: str) -> list[str]:
    """The ssh argv: EDGEKIT_SSH (or ``ssh``), the user's -o options first (ssh keeps the first
    value it sees), then ours, then the script for the remote ``sh``."""
    try:
        base = shlex.split(os.environ.get(SSH_ENV, "") or "ssh")
    except ValueError as exc:
        raise FlashError(f"{SSH_ENV} is not a valid command line: {exc}") from None
    argv = list(base)
    for option in target.options:
        argv += ["-o", option]
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, math.ceil(target.connect_timeout_s))}",
             "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
    if target.port:
        argv += ["-p", str(target.port)]
    if target.user:
        argv += ["-l", target.user]
    return [*argv, "--", target.host, "sh -c " + shlex.quote(remote_script)]


def _remote_path(path: str) -> str:
    """A shell word for ``path``; ``~/x`` stays relative to the remote user's home."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (shlex.quote(path[1:]) if len(path) > 1 else "")
    return shlex.quote(path)


def install_script(target: SshTarget, size: int, key_text: str | None) -> str:
    try:
        agent = shlex.split(target.agent_cmd)
    except ValueError as exc:
        raise FlashError(f"--agent-cmd is not a valid command line: {exc}") from None
    if not agent:
        raise FlashError("--agent-cmd is empty")
    run_agent = " ".join(shlex.quote(word) for word in agent)
    name = f".flash-{secrets.token_hex(6)}"
    key_args = ' --key "$key"' if key_text is not None else ""
    lines = [
        "umask 077",
        f"store={_remote_path(target.store)}",
        f'tmp="$store"/{INCOMING}/{name}.ekb',
        f'key="$store"/{INCOMING}/{name}.pub',
        'cleanup() { rm -f "$tmp" "$key"; }',
        "trap cleanup EXIT",
        "trap 'cleanup; exit 129' HUP INT TERM PIPE",
        f'command -v {shlex.quote(agent[0])} >/dev/null 2>&1 || '
        f'{{ echo "PATH=$PATH" >&2; exit {NO_AGENT}; }}',
        f'mkdir -p "$store"/{INCOMING} || exit {WRITE_FAILED}',
        f'cat > "$tmp" || exit {WRITE_FAILED}',
        'got=$(wc -c < "$tmp")',
        f'[ "$got" -eq {size} ] || {{ echo "received $got of {size} bytes" >&2; exit {TRUNCATED}; }}',
    ]
    if key_text is not None:
        lines.append(f'printf %s {shlex.quote(key_text)} > "$key" || exit {WRITE_FAILED}')
    lines += [f'{run_agent} install "$tmp" --store "$store"{key_args} --json || exit {REFUSED}',
              f'{run_agent} status --store "$store" --json || exit {NO_STATUS}']
    return "\n".join(lines) + "\n"


def flash_ssh(bundle_path: Path, target: SshTarget, *, key: Path | None = None,
              progress: Callable[[int, int], None] | None = None) -> DeviceState:
    size = bundle_path.stat().st_size
    key_text = _read_text(key) if key is not None else None
    argv = ssh_command(target, install_script(target, size, key_text))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err)
        except OSError as exc:
            raise FlashError(f"cannot run {argv[0]}: {exc.strerror or exc} "
                             f"(install OpenSSH, or set {SSH_ENV})") from None
        _stream(bundle_path, proc.stdin, size, progress)
        try:
            rc = proc.wait(timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise FlashError(f"{target.label}: no answer within {INSTALL_TIMEOUT_S:g} s") from None
        stdout, stderr = _read_all(out), _read_all(err)
    if rc != 0:
        raise _failure(target, rc, stderr)
    return _parse_reports(target, stdout)


def _stream(path: Path, sink: IO[bytes] | None, size: int,
            progress: Callable[[int, int], None] | None) -> None:
    """Write the bundle to ssh's stdin; a remote script that exited early closes the pipe."""
    assert sink is not None
    sent = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                sink.write(chunk)
                sent += len(chunk)
                if progress:
                    progress(sent, size)
        sink.close()
    except BrokenPipeError:
        pass
    except OSError as exc:
        raise FlashError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        try:
            sink.close()
        except BrokenPipeError:
            pass


def _read_all(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode("utf-8", errors="replace")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FlashError(f"cannot read key {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else "no message"
    return (last.removeprefix("error: "))[:400]


def _failure(target: SshTarget, rc: int, stderr: str) -> FlashError:
    why = _last_line(stderr)
    where = target.label
    if rc == SSH_FAILED:
        return FlashError(f"ssh {where}: {why}")
    if rc == NO_AGENT:
        return FlashError(f"{where}: {target.agent_cmd!r} not found on the device ({why}); install "
                          f"the agent there (pip install ./agent) or give --agent-cmd PATH")
    if rc == WRITE_FAILED:
        return FlashError(f"{where}: cannot write to {target.store}/{INCOMING}: {why}")
    if rc == TRUNCATED:
        return FlashError(f"{where}: the upload was cut short ({why})")
    if rc == REFUSED:
        return FlashError(f"{where} refused the bundle: {why}")
    if rc == NO_STATUS:
        return FlashError(f"{where}: installed, but `{target.agent_cmd} status` failed: {why}")
    return FlashError(f"{where}: the remote command failed (exit {rc}): {why}")


def _parse_reports(target: SshTarget, stdout: str) -> DeviceState:
    """stdout holds two JSON objects: the install report, then the store status."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    try:
        while len(docs) < 2:
            while i < len(stdout) and stdout[i].isspace():
                i += 1
            doc, i = decoder.raw_decode(stdout, i)
            docs.append(doc)
    except ValueError:
        raise FlashError(f"{target.label}: the agent's output is not the expected JSON "
                         f"(got {stdout.strip()[:120]!r}); is {target.agent_cmd!r} edgekit-agent?") from None
    install, status = docs
    return DeviceState.from_dict(status, install=_summary(install))


def _summary(install: Any) -> dict[str, Any]:
    return dict(install) if isinstance(install, dict) else {}

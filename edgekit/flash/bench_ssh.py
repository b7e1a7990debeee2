"""Time models on a real board: copy each over the flash ssh transport (one OpenSSH connection,
the model on stdin into a temporary file) and run the device's own ``edgekit-agent bench``.

``ssh://[user@]host[:port]`` names the board; ``EDGEKIT_SSH`` and ``--ssh-option`` apply as for
``edgekit flash``. The temporary file is removed whatever happens.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..errors import FlashError
from .ssh import DEFAULT_AGENT_CMD, SSH_FAILED, SshTarget, ssh_command

BENCH_TIMEOUT_S = 600.0
DEFAULT_RUNS = 50
NO_AGENT, WRITE_FAILED, TRUNCATED, BENCH_FAILED = 94, 91, 92, 93


@dataclass(frozen=True)
class DeviceBench:
    p50_ms: float
    p95_ms: float
    runs: int
    runtime: str
    machine: str


def parse_profile_uri(text: str, options: tuple[str, ...] = (),
                      agent_cmd: str = DEFAULT_AGENT_CMD) -> SshTarget:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "ssh":
        raise FlashError(f"--profile-on {text!r}: expected ssh://[user@]host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise FlashError(f"--profile-on {text!r}: the port must be a number from 1 to 65535") from None
    host = parts.hostname or ""
    if not host or host.startswith("-") or parts.query or parts.fragment:
        raise FlashError(f"--profile-on {text!r}: expected ssh://[user@]host[:port]")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    return SshTarget(host=host, store="", user=user, port=port, options=options,
                     agent_cmd=agent_cmd)


def bench_script(target: SshTarget, size: int, runs: int) -> str:
    try:
        agent = shlex.split(target.agent_cmd)
    except ValueError as exc:
        raise FlashError(f"--agent-cmd is not a valid command line: {exc}") from None
    run_agent = " ".join(shlex.quote(word) for word in agent)
    return "\n".join([
        "umask 077",
        f'command -v {shlex.quote(agent[0])} >/dev/null 2>&1 || '
        f'{{ echo "PATH=$PATH" >&2; exit {NO_AGENT}; }}',
        f'tmp=$(mktemp "${{TMPDIR:-/tmp}}/edgekit-bench-XXXXXX") || exit {WRITE_FAILED}',
        'trap \'rm -f "$tmp"\' EXIT',
        "trap 'rm -f \"$tmp\"; exit 129' HUP INT TERM PIPE",
        f'cat > "$tmp" || exit {WRITE_FAILED}',
        'got=$(wc -c < "$tmp")',
        f'[ "$got" -eq {size} ] || {{ echo "received $got of {size} bytes" >&2; exit {TRUNCATED}; }}',
        f'{run_agent} bench "$tmp" --runs {int(runs)} --json || exit {BENCH_FAILED}',
    ]) + "\n"


def bench_on_device(target: SshTarget, model: bytes, runs: int = DEFAULT_RUNS) -> DeviceBench:
    argv = ssh_command(target, bench_script(target, len(model), runs))
    try:
        proc = subprocess.run(argv, input=model, capture_output=True, timeout=BENCH_TIMEOUT_S)
    except OSError as exc:
        raise FlashError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise FlashError(f"{target.label}: no answer within {BENCH_TIMEOUT_S:g} s") from None
    err = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        raise _failure(target, proc.returncode, err)
    return _parse(target, proc.stdout.decode("utf-8", errors="replace"))


def _failure(target: SshTarget, rc: int, stderr: str) -> FlashError:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    why = (lines[-1].removeprefix("error: ") if lines else "no message")[:300]
    where = target.label
    if rc == SSH_FAILED:
        return FlashError(f"ssh {where}: {why}")
    if rc == NO_AGENT:
        return FlashError(f"{where}: {target.agent_cmd!r} not found on the device ({why}); "
                          f"install the agent there (pip install ./agent)")
    if rc in (WRITE_FAILED, TRUNCATED):
        return FlashError(f"{where}: cannot copy the model for timing: {why}")
    if rc == BENCH_FAILED:
        return FlashError(f"{where}: the device cannot run the model: {why}")
    return FlashError(f"{where}: the remote benchmark failed (exit {rc}): {why}")


def _parse(target: SshTarget, stdout: str) -> DeviceBench:
    try:
        doc: Any = json.loads(stdout)
        return DeviceBench(p50_ms=float(doc["p50_ms"]), p95_ms=float(doc["p95_ms"]),
                           runs=int(doc["runs"]), runtime=str(doc["runtime"]),
                           machine=str(doc["machine"]))
    except (ValueError, KeyError, TypeError):
        raise FlashError(f"{target.label}: `{target.agent_cmd} bench` did not answer with its "
                         f"JSON (got {stdout.strip()[:120]!r}); is the agent up to date?") from None

"""The demo's child processes: started in the demo's process group, all stopped on the way out.

Every child is stopped by :meth:`Supervisor.stop_all` (SIGTERM, then SIGKILL after a grace
period), which runs on a normal exit, on an exception, at interpreter exit (``atexit``) and on
SIGTERM/SIGINT/SIGHUP (turned into ``SystemExit`` so ``finally`` blocks run). On Linux each child
also gets ``PR_SET_PDEATHSIG``: if the demo itself is SIGKILLed, the kernel stops the children.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edgekit_agent.errors import EdgekitError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: stop_all and atexit still stop the children


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path
    lines: queue.Queue = field(default_factory=queue.Queue)  # stdout lines when piped

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def wait_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix`` (the child must be piped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if not self.alive():
                    break
                continue
            if line is None:
                break
            if line.startswith(prefix):
                return line
        raise EdgekitError(f"{self.name} did not start (no '{prefix}…' line in {timeout:g} s); "
                           f"its log {self.log}: {self.tail(3)!r}")


class Supervisor:
    """Starts children and guarantees they are gone when the demo ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self._lock = threading.Lock()
        self._previous: dict[int, Any] = {}
        self.signalled = 0

    def install_handlers(self) -> None:
        atexit.register(self.stop_all)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        atexit.unregister(self.stop_all)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Remembered as well as raised: a SystemExit raised while the main thread happens to run
        # a __del__ or a GC callback is swallowed by Python, so steps check this flag too.
        self.signalled = signum
        raise SystemExit(128 + signum)

    def check_signal(self) -> None:
        """SystemExit if a stop signal came (see _on_signal)."""
        if self.signalled:
            raise SystemExit(128 + self.signalled)

    def spawn(self, name: str, argv: list[str], *, pipe_stdout: bool = False,
              env: dict[str, str] | None = None) -> Child:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        out: IO[bytes] = log.open("wb")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if pipe_stdout else out,
                                    stderr=out, env=environment, cwd=self.workdir,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except OSError as exc:
            out.close()
            raise EdgekitError(f"cannot start {name} ({argv[0]}): {exc.strerror or exc}") from None
        child = Child(name, proc, log)
        with self._lock:
            self.children.append(child)
        if pipe_stdout:
            threading.Thread(target=_pump, args=(proc, child.lines, out), daemon=True,
                             name=f"demo-{name}-stdout").start()
        else:
            out.close()
        return child

    def stop(self, child: Child, grace_s: float = 10.0, signalled: bool = False) -> int | None:
        """SIGTERM (unless ``signalled`` already: a second one could land during the child's
        interpreter teardown, where it kills), wait, then SIGKILL."""
        if child.proc.poll() is None and not signalled:
            child.proc.send_signal(signal.SIGTERM)
        try:
            return child.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            return child.proc.wait()

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM to every child still running, newest first, then SIGKILL stragglers."""
        with self._lock:
            children, self.children = list(reversed(self.children)), []
        for c in children:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in children:
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()


def _pump(proc: subprocess.Popen, lines: queue.Queue, log: IO[bytes]) -> None:
    """Copy a child's stdout to its log, line by line, and hand each line to ``wait_line``."""
    assert proc.stdout is not None
    with log:
        for raw in proc.stdout:
            log.write(raw)
            log.flush()
            lines.put(raw.decode(errors="replace").rstrip("\n"))
    lines.put(None)

"""`edgekit-agent run`: the agent daemon (commands are executed by :mod:`.commands`).

Composes the bundle store and :class:`Agent`, the sensors, the power :class:`PolicyEngine`, MQTT
:class:`Telemetry` with its on-disk queue, the local HTTP API and (for demos and tests) a
synthetic inference load. The main thread samples the sensors, lets the policy pick the mode,
enforces it (interpreter threads, model variant, cpufreq governor, a token bucket on inference,
a duty cycle), publishes telemetry on schedule and executes authenticated commands. SIGTERM or
SIGINT stops it cleanly: status ``offline`` is published and the queue flushed (for a while).
"""

from __future__ import annotations

import logging
import os
import queue
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import AgentConfig
from ..errors import EdgekitError, RateLimited
from ..power.energy import PowerFigures, estimate_energy
from ..power.policy import Mode, ModeChange, Policy, PolicyEngine
from ..power.rate import ModeGate, TokenBucket
from ..power.sensors import Readings, SensorSource, make_sensors
from ..telemetry.mqtt import Telemetry
from ..telemetry.outbox import Outbox
from ..telemetry.schema import Command, CommandVerifier, Topics, command_id_of, event_payload
from .agent import Agent
from .commands import execute
from .http_api import HttpApi
from .offload import OffloadLink, Served, with_simulated_latency
from .ota import OtaReceiver
from .split import Splitter, make_splitter, with_simulated_slowdown

log = logging.getLogger("edgekit_agent.daemon")
SAMPLE_S = 0.25  # sensor/policy tick; rule hold times are measured at this resolution


def run(config: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    daemon = Daemon(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop_requested.set())
    try:
        daemon.start()
        daemon.serve()
    finally:
        daemon.close()
    return 0



class Daemon:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stop_requested = threading.Event()
        self.gate = ModeGate()
        self._lock = threading.RLock()  # mode application vs. command handling
        self.telemetry: Telemetry | None = None
        self.outbox: Outbox | None = None
        self.agent: Agent | None = None
        self.http: HttpApi | None = None
        self._load_thread: threading.Thread | None = None
        self.offload: OffloadLink | None = None
        if config.mqtt.enabled:
            self.outbox = Outbox(config.queue.path, config.queue.max_messages)
            topics = Topics(config.fleet, config.device_id)
            self.telemetry = Telemetry(config.mqtt, topics, self.outbox,
                                       status=self._status_body)
        self.policy = self._load_policy()
        self.engine = PolicyEngine(self.policy)
        self.agent = Agent.from_config(config, on_event=self._on_store_event)
        base = Path(config.source).parent if config.source else Path.cwd()
        try:
            self.sensors: SensorSource = make_sensors(
                config.sensors.kind, config.sensors.options,
                power=self.agent.manifest.target_profile.get("power"), source=config.source, base=base)
        except EdgekitError:
            self.agent.close()  # a clean stop: a typo in the config is not a crash of the bundle
            raise
        self._slow_infer = with_simulated_latency(
            with_simulated_slowdown(self.agent.infer, config.offload.simulated_slowdown,
                                    self.agent.manifest.primary.latency_ms),
            config.offload.simulated_latency_ms)
        self.splitter: Splitter | None = None
        if config.mqtt.enabled and (config.offload.enabled or config.offload.worker):
            self.offload = OffloadLink(config.mqtt, Topics(config.fleet, config.device_id),
                                       config.offload, local=self._local_infer, bundle=self._bundle_info)
            if config.offload.split:
                self.splitter = make_splitter(self.agent, self.offload, local=self._local_infer,
                                              int8=config.offload.split_int8,
                                              slowdown=config.offload.simulated_slowdown)
        if self.splitter is not None and self.offload is not None:
            self.offload.split_tail = self.splitter.tail
        self.verifier = CommandVerifier(config.device_id, config.store.public_key,
                                        replay_dir=config.store.root)  # durable replay state
        self.readings = Readings(ts=time.time())
        self._busy_seen = self.agent.stats()["busy_s"]
        self._window = self._window_start()
        self.ota = OtaReceiver(self, self.telemetry.ota) if self.telemetry is not None else None

    # -- set-up --

    def _load_policy(self) -> Policy:
        path = self.config.policy.file
        return Policy.load(path) if path is not None else Policy.single()

    def _missing_variants(self) -> dict[str, str]:
        names = {v.name for v in self.agent.manifest.all_variants}
        return {m.name: m.variant for m in self.policy.modes if m.variant and m.variant not in names}

    def start(self) -> None:
        self._apply(self.engine.current, initial=True)
        if self.offload is not None:
            if self.config.offload.worker:  # measure the service time we offer before saying so
                for inputs in _synthetic_inputs(self.agent, self.config.load.seed, n=5):
                    self._local_infer(inputs)
            if self.splitter is not None and self.config.offload.worker:
                self.splitter.preload_tails()
            if self.splitter is not None and self.config.offload.enabled:
                self.splitter.calibrate(_synthetic_inputs(self.agent, self.config.load.seed, n=1)[0])
            self.offload.start()
        if self.telemetry is not None:
            self.telemetry.start()
        if self.config.http.enabled:
            self.http = HttpApi.from_config(self.agent, self.config, mode=lambda: self.engine.mode,
                                            infer=self._gated_infer, health=self._health).start()
            log.info("HTTP API on %s", self.http.url)
        missing = self._missing_variants()
        self._event("start", f"agent {__version__} started in mode {self.engine.mode}", data={
            "bundle": self._bundle_info(), "policy": self.policy.source, "modes": list(self.policy.mode_names),
            "sensors": self.config.sensors.kind, "http": self.http.url if self.http else None,
            "load_rate": self.config.load.rate})
        if missing:
            self._event("error", f"policy modes name variants the bundle lacks: {missing}; "
                        "those modes keep the current variant", level="warning")
        if self.config.load.rate > 0:
            self._load_thread = threading.Thread(target=self._load_loop, name="edgekit-load", daemon=True)
            self._load_thread.start()

    # -- the main loop --

    def serve(self) -> None:
        interval = self.config.telemetry.interval_s
        next_sample = next_report = time.monotonic()
        next_report += interval
        while not self.stop_requested.is_set():
            now = time.monotonic()
            try:
                self._drain_commands()
                if self.ota is not None:
                    self.ota.tick(now)
                if now >= next_sample:
                    next_sample = now + SAMPLE_S
                    self._sample(now)
                if now >= next_report:
                    next_report += interval
                    if next_report < now:  # we fell behind (a slow step): do not burst
                        next_report = now + interval
                    self.report()
            except EdgekitError as exc:  # e.g. the queue's disk is full: keep inferring, say why
                log.error("%s", exc)
            self.stop_requested.wait(0.02)  # also the latency of a command

    def _sample(self, now: float) -> None:
        busy = self.agent.stats()["busy_s"]
        self.sensors.add_busy(busy - self._busy_seen)
        self._busy_seen = busy
        self.readings = self.sensors.read()
        self._power_samples.append(self.readings.power_w)
        change = self.engine.update(self.readings, now)
        if change is not None:
            self._on_mode_change(change)

    def _on_mode_change(self, change: ModeChange) -> None:
        applied = self._apply(self.engine.current)
        self._event("mode_change", f"mode {change.from_mode} -> {change.to_mode}: {change.reason}",
                    data={**change.to_dict(), "mode": self.engine.current.to_dict(), "applied": applied,
                          "readings": self.readings.to_dict(), "active_rules": list(self.engine.active_rules)})

    def _apply(self, mode: Mode, initial: bool = False) -> dict[str, Any]:
        """Make the agent run as ``mode`` says; what could not be done is reported, not fatal."""
        applied: dict[str, Any] = {}
        with self._lock:
            self.gate.apply(mode)
            applied["max_inferences_per_s"] = mode.max_inferences_per_s
            applied["duty_cycle"] = mode.duty_cycle
            threads = mode.threads or self.config.runtime.threads
            manifest = self.agent.manifest
            variant = mode.variant if mode.variant in {v.name for v in manifest.all_variants} else None
            variant = variant or self.config.runtime.variant or manifest.primary.name
            try:
                if variant != self.agent.variant:
                    self.agent.set_variant(variant)
                if threads != self.agent.threads:
                    self.agent.set_threads(threads)
            except EdgekitError as exc:
                applied["error"] = str(exc)
                if not initial:
                    self._event("error", f"mode {mode.name}: {exc}", level="error")
            applied["variant"], applied["threads"] = self.agent.variant, self.agent.threads
            if mode.governor:
                applied["governor"] = mode.governor if self.sensors.set_governor(mode.governor) else \
                    f"{mode.governor} (not writable here)"
        return applied

    # -- inference admission --

    def _gated_infer(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        link = self.offload
        if link is not None and self.config.offload.enabled and self.engine.current.offload_allowed:
            # Offloaded work costs no local compute, so the mode's rate limit does not apply;
            # the fallback runs even when the gate is shut: a request is served, never dropped.
            if self.splitter is not None and self.splitter.plan is not None:
                return self.splitter.infer(self.agent.prepare(inputs))
            return link.infer(self.agent.prepare(inputs), local_ms=link.service.p50())
        refusal = self.gate.try_enter()
        if refusal is not None:
            raise RateLimited(f"mode {self.engine.mode}: {refusal}")
        return Served(self._local_infer(inputs), self.config.device_id)

    def _local_infer(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        outputs = self._slow_infer(inputs)
        if self.offload is not None:
            self.offload.note_service((time.perf_counter() - t0) * 1e3)
        return outputs

    def _load_loop(self) -> None:
        """Synthetic inference at up to ``load.rate``/s, within the mode's limits."""
        pacing = TokenBucket(self.config.load.rate)
        inputs = _synthetic_inputs(self.agent, self.config.load.seed)
        i = 0
        while self.gate.enter(self.stop_requested, pacing):
            try:
                self.agent.infer(inputs[i % len(inputs)])
            except EdgekitError as exc:  # counted by the agent; do not spin on a broken model
                log.warning("load inference failed: %s", exc)
                self.stop_requested.wait(0.1)
                inputs = _synthetic_inputs(self.agent, self.config.load.seed)
            i += 1

    # -- telemetry --

    def _window_start(self) -> dict[str, Any]:
        s = self.agent.stats()
        self._power_samples: list[float | None] = []
        return {"t": time.monotonic(), "count": s["count"], "errors": s["errors"], "busy": s["busy_s"]}

    def report(self) -> int | None:
        if self.telemetry is None:
            return None
        stats, start, samples = self.agent.stats(), self._window, self._power_samples
        self._window = self._window_start()
        elapsed = self._window["t"] - start["t"]
        count, busy = stats["count"] - start["count"], stats["busy_s"] - start["busy"]
        measured = [p for p in samples if p is not None]
        energy = estimate_energy(PowerFigures.from_profile(self.agent.manifest.target_profile),
                                 elapsed_s=elapsed, busy_s=busy, count=count,
                                 measured_power_w=sum(measured) / len(measured) if measured else None)
        body = {
            "interval_s": round(elapsed, 4), "mode": self.engine.mode,
            "override": self.engine.override, "active_rules": list(self.engine.active_rules),
            "inference": {"count": stats["count"], "errors": stats["errors"], "rejected": stats["rejected"],
                          "count_interval": count, "errors_interval": stats["errors"] - start["errors"],
                          "per_s": round(count / elapsed, 4) if elapsed > 0 else 0.0,
                          "busy_s_interval": round(busy, 6), "latency_ms": stats["latency_ms"]},
            "limits": {"max_inferences_per_s": self.gate.bucket.rate, "duty_cycle": self.gate.duty,
                       "offload_allowed": self.engine.current.offload_allowed},
            "sensors": self.readings.to_dict(), "bundle": self._bundle_info(),
            "energy": energy.to_dict() if energy else None,
            "memory": {"rss_bytes": _rss_bytes()}, "uptime_s": round(stats["uptime_s"], 3),
            "offload": self.offload.stats() if self.offload is not None else None,
            "link": self.offload.estimate.to_dict() if self.offload is not None else None,
            "split": self.splitter.stats() if self.splitter is not None else None}
        return self.telemetry.publish_telemetry(body)

    def _health(self) -> dict[str, Any]:
        link = self.telemetry.link_state() if self.telemetry is not None else {"enabled": False}
        return {"mqtt": link}

    def _bundle_info(self) -> dict[str, Any]:
        m = self.agent.manifest
        return {"id": self.agent.bundle_id, "name": m.name, "version": m.version, "target": m.target,
                "variant": self.agent.variant, "threads": self.agent.threads}

    def _status_body(self) -> dict[str, Any]:
        if self.agent is None:
            return {}
        offload = None if self.offload is None else {
            "worker": self.config.offload.worker, "service_ms_p50": self.offload.service.p50()}
        return {"bundle": self._bundle_info(), "mode": self.engine.mode, "agent_version": __version__,
                "offload_allowed": self.engine.current.offload_allowed, "offload": offload,
                "link": None if self.offload is None else self.offload.estimate.to_dict()}

    def _event(self, kind: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None,
               correlation_id: str | None = None) -> None:
        if self.telemetry is None:
            log.log(logging.ERROR if level == "error" else logging.INFO, "event %s: %s", kind, message)
            return
        self.telemetry.publish_event(kind, message, level=level, data=data, correlation_id=correlation_id)

    def _on_store_event(self, kind: str, payload: dict[str, Any]) -> None:
        what = payload.get("reason") or f"bundle {payload.get('bundle_id')}"
        self._event(kind if kind in ("install", "rollback") else "error", f"{kind}: {what}",
                    level="warning" if payload.get("automatic") else "info", data=payload)

    # -- commands --

    def _drain_commands(self) -> None:
        if self.telemetry is None:
            return
        while True:
            try:
                raw = self.telemetry.commands.get_nowait()
            except queue.Empty:
                return
            self.handle_command(raw)

    def handle_command(self, raw: bytes) -> None:
        """Execute one ``cmd`` payload; every failure becomes a ``cmd_error`` event."""
        try:
            cmd = self.verifier.parse(raw)
        except EdgekitError as exc:
            self._event("cmd_error", str(exc), level="error", correlation_id=command_id_of(raw))
            return
        try:
            with self._lock:
                result = execute(self, cmd)
        except EdgekitError as exc:
            self._reply(cmd, "cmd_error", f"{cmd.action} failed: {exc}", "error", {})
        except Exception as exc:  # a bug must not take the agent down; say so and carry on
            log.exception("command %s crashed", cmd.action)
            self._reply(cmd, "cmd_error", f"{cmd.action} failed: internal error "
                        f"{type(exc).__name__}: {exc}", "error", {})
        else:
            self._reply(cmd, "cmd_result", f"{cmd.action} done", "info", result)

    def _reply(self, cmd: Command, kind: str, message: str, level: str, data: dict[str, Any]) -> None:
        data = {**data, "action": cmd.action}
        self._event(kind, message, level=level, data=data, correlation_id=cmd.id)
        if cmd.reply_to and self.telemetry is not None:
            self.telemetry.publish_to(cmd.reply_to, event_payload(
                self.config.device_id, 0, kind, message, level=level, data=data, correlation_id=cmd.id))

    # -- shutdown --

    def close(self) -> None:
        self.stop_requested.set()
        if self._load_thread is not None:
            self._load_thread.join(5)
        if self.http is not None:
            self.http.stop()
        if self.offload is not None:
            self.offload.stop()
        if self.telemetry is not None:
            self._event("stop", "agent stopping")
            self.telemetry.publish_status("offline")
            self.telemetry.stop(flush_timeout_s=5.0)
        if self.outbox is not None:
            self.outbox.close()
        if self.agent is not None:
            self.agent.close()


def _synthetic_inputs(agent: Agent, seed: int, n: int = 16) -> list[dict[str, np.ndarray]]:
    """Random inputs in [0, 1) (float in, the agent quantizes) in every input's shape."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arrays = {}
        for spec in agent.inputs:
            shape = tuple(d if d > 0 else 1 for d in spec.shape)
            if spec.scale is not None or spec.dtype.startswith("float"):
                arrays[spec.name] = rng.random(shape, dtype=np.float32)
            else:
                arrays[spec.name] = np.zeros(shape, dtype=spec.dtype)
        out.append(arrays)
    return out


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, KiB on Linux

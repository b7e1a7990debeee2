"""`edgekit demo`: the whole story in one command, on this machine, leaving nothing behind.

1. pack the digits example for one target of each family (candidates table, chosen recipe);
2. start a broker: Mosquitto when installed, else the embedded amqtt (MQTT 3.1.1);
3. start the coordinator (when this build has it): registry, offload routing, dashboard;
4. start three simulated devices (real ``edgekit-agent`` processes) on the rpi4 bundle;
5. deploy version 2 over OTA (``edgekit deploy``, when this build has it);
6. send inference traffic; a burst heats one device until its policy changes mode by itself
   (and, with the coordinator, hands requests to the others);
7. print the fleet table and the dashboard URL; stop every process.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fleet.status import render
from . import steps
from .devices import HOT_C, Device, FleetWatch, offload_supported, start_device, write_device
from .packs import DEVICE_TARGET, fleet_key, pack_families, pack_target
from .procs import Supervisor
from .traffic import Traffic

DEVICE_NAMES = ("pi-01", "pi-02", "pi-03")
HOT_DEVICE = "pi-03"
NOT_AVAILABLE = "not available in this build"


@dataclass(frozen=True)
class DemoOptions:
    quick: bool = False
    as_json: bool = False
    broker_kind: str = "auto"
    keep: bool = False  # keep the work folder (configs, stores, logs)

    @property
    def rate(self) -> float:  # requests/s per device in normal traffic
        return 10.0

    @property
    def phase_s(self) -> float:  # normal traffic before the burst, and again after it
        return 3.0 if self.quick else 10.0


class Demo:
    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.out = sys.stderr if opts.as_json else sys.stdout
        self.workdir = Path(tempfile.mkdtemp(prefix="edgekit-demo-"))
        self.sup = Supervisor(self.workdir)
        self.watch: FleetWatch | None = None
        self.traffic: Traffic | None = None
        self.devices: list[Device] = []
        self.result: dict[str, Any] = {}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def step(self, n: int, title: str) -> None:
        self.sup.check_signal()
        self.say(f"\n== {n}/7 {title}")

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.sup.install_handlers()
        ok = False
        try:
            self._story()
            self.sup.check_signal()
            ok = True
        except SystemExit as exc:  # a signal (see procs.Supervisor): say so, then stop everything
            self.say(f"\ndemo interrupted (exit {exc.code}): stopping every process it started")
            raise
        finally:
            self.stop_all()
            if ok and not self.opts.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                self.say(f"(work folder kept: {self.workdir}; logs in {self.workdir / 'logs'})")
        self.result["seconds"] = round(time.monotonic() - t0, 1)
        return self.result

    def _story(self) -> None:
        key, pub = fleet_key()
        self.step(1, "pack the digits example for one target of each family")
        packs = pack_families(key, self.say, show_progress=not self.opts.as_json)
        self.result["families_packed"] = len({p.family for p in packs})
        bundle = next(p.bundle for p in packs if p.target == DEVICE_TARGET)

        self.step(2, "broker")
        broker = steps.start_broker(self.sup, self.opts.broker_kind)
        self.say(f"{broker.kind} on {broker.url} (MQTT {broker.protocol})")
        self.watch = FleetWatch(broker.url, protocol=broker.protocol)

        self.step(3, "coordinator")
        dashboard = steps.start_coordinator(self.sup, broker)
        self.say(f"dashboard {dashboard}" if dashboard else f"coordinator: {NOT_AVAILABLE}")

        self.step(4, f"three simulated devices ({', '.join(DEVICE_NAMES)}; {HOT_DEVICE} runs hot)")
        self._start_devices(bundle, pub, broker)

        self.step(5, "OTA: version 2 of the rpi4 bundle to the fleet")
        self._ota(key, broker)

        self.step(6, "inference traffic; a burst overheats one device")
        self._traffic()

        self.step(7, "fleet")
        self._table(dashboard)

    def _start_devices(self, bundle: Path, pub: Path, broker: steps.BrokerInfo) -> None:
        offload = offload_supported() and steps.coordinator_available()
        for name in DEVICE_NAMES:
            device = write_device(self.workdir, name, bundle, pub, (broker.host, broker.port),
                                  broker.protocol, hot=name == HOT_DEVICE, offload=offload)
            self.devices.append(start_device(self.sup, device))
        assert self.watch is not None
        names = set(DEVICE_NAMES)
        try:
            self.watch.wait(lambda: names <= self.watch.online(), 90.0, "3 devices online")
        except Exception:
            for d in self.devices:
                if d.child and not d.child.alive():
                    self.say(f"{d.name} exited: {d.child.tail(5)}")
            raise
        self.result["devices"] = len(self.watch.online() & names)
        for d in self.devices:
            self.say(f"{d.name}: online, HTTP {d.http}, config {d.config}")

    def _ota(self, key: Path, broker: steps.BrokerInfo) -> None:
        if not steps.deploy_available():
            self.say(f"edgekit deploy: {NOT_AVAILABLE}")
            self.result["ota_installed"] = 0
            return
        v2 = pack_target(DEVICE_TARGET, "cpu", key, version="2", show_progress=False)
        assert self.watch is not None
        ota = steps.deploy_ota(self.sup, v2.bundle, broker, key, self.watch,
                               list(DEVICE_NAMES), "2")
        self.result["ota_installed"] = ota.installed
        s = ota.summary
        self.say(f"rollout {s.get('rollout', '?')}: {s.get('status', '?')}, "
                 f"{ota.installed}/{len(DEVICE_NAMES)} devices run version 2 "
                 f"({ota.seconds:.1f} s)")

    def _traffic(self) -> None:
        assert self.watch is not None
        self.traffic = Traffic({d.name: d.http for d in self.devices}).start()
        self.traffic.set_all(self.opts.rate)
        time.sleep(self.opts.phase_s)
        change = steps.overheat(self.traffic, self.watch, HOT_DEVICE, timeout=60.0)
        self.say(f"{HOT_DEVICE}: {change['message']} (threshold {HOT_C:g} degC)")
        self.traffic.set_rate(HOT_DEVICE, self.opts.rate)
        time.sleep(self.opts.phase_s + 1.0)

    def _report_traffic(self) -> None:
        assert self.watch is not None and self.traffic is not None
        self.traffic.stop()
        t = self.traffic.totals()
        self.result.update(mode_changes=len(self.watch.of_kind("mode_change")),
                           offloaded_requests=t.offloaded, lost_requests=t.lost,
                           requests=t.requests, served_locally=t.local, refused=t.refused,
                           accuracy=round(t.correct / t.answered, 4) if t.answered else None)
        self.say(f"{t.requests} requests: {t.local} served locally, {t.offloaded} offloaded, "
                 f"{t.refused} refused by a device's mode (HTTP 503), {t.lost} lost; "
                 f"accuracy {self.result['accuracy']}")
        for err in t.errors[:3]:
            self.say(f"  lost: {err}")

    def _table(self, dashboard: str | None) -> None:
        assert self.watch is not None
        time.sleep(1.2)  # one more telemetry interval: the table shows the state after the burst
        self._report_traffic()
        self.say(render([r for r in self.watch.view.rows() if r["device"] in DEVICE_NAMES]))
        if dashboard:
            rows = steps.dashboard_rows(dashboard)
            self.say(f"dashboard: {dashboard}  ({sum(1 for r in rows if r.get('online'))} of "
                     f"{len(rows)} devices online in the coordinator's registry)")
        else:
            self.say(f"dashboard: {NOT_AVAILABLE} (the coordinator serves it)")

    def stop_all(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        children = [d.child for d in self.devices if d.child is not None]
        codes = steps.stop_devices(self.sup, children)
        if self.watch is not None:
            self.watch.close()
        self.sup.stop_all()
        self.sup.restore_handlers()
        if any(c not in (0, None) for c in codes):
            self.say(f"note: agent exit codes {codes}")


def summary_line(result: dict[str, Any]) -> str:
    keys = ("families_packed", "devices", "ota_installed", "mode_changes", "offloaded_requests",
            "lost_requests", "seconds")
    return "demo: " + ", ".join(f"{k}={result.get(k)}" for k in keys)


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    return Demo(opts).run()

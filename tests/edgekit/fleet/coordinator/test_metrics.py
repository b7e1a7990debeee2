"""`/metrics`, `/api/history`, `/api/rollouts` and the static allow-list of a coordinator
subprocess on a real Mosquitto, fed by devices whose every message the test wrote itself, and
the sample Grafana dashboard checked against that scrape (so it cannot drift)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgekit.fleet.deploy.rollout import RolloutOptions
from edgekit.fleet.deploy.state import DONE, HALTED, StateDB

from .conftest import wait_until

pytestmark = pytest.mark.host
GRAFANA = Path(__file__).resolve().parents[4] / "docs" / "grafana" / "edgekit-fleet.json"
LATENCIES = {"m-a": [0.3, 0.7, 3.0, 40.0], "m-b": [1.0, 1.0, 2.0], "m-c": [700.0, 4000.0]}
MODES = {"m-a": "performance", "m-b": "eco", "m-c": "eco"}


def _rollouts(folder: Path, fleet: str) -> None:
    """Two rollouts as `edgekit deploy` stores them: one halted in wave 1, one done."""
    db = StateDB(folder)
    try:
        halted = db.create(fleet, "v7.ekb", "ab" * 32, "bid7", "7", RolloutOptions(),
                           [["m-a"], ["m-b", "m-c"]])
        db.set_device(halted.id, "m-a", state="failed", reason="selftest_failed: no runtime")
        db.set_device(halted.id, "m-b", state="skipped")
        db.set_device(halted.id, "m-c", state="skipped")
        db.update(halted.id, status=HALTED, halt_reason="failure rate 1.00")
        done = db.create(fleet, "v8.ekb", "cd" * 32, "bid8", "8", RolloutOptions(),
                         [["m-a", "m-b", "m-c"]])
        for d in ("m-a", "m-b", "m-c"):
            db.set_device(done.id, d, state="succeeded")
        db.update(done.id, status=DONE)
        db.create("otherfleet", "v9.ekb", "ef" * 32, "bid9", "9", RolloutOptions(), [["x"]])
    finally:
        db.close()


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _status_code(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def fed(start_coordinator, fake_device, fleet_name, tmp_path):
    """A coordinator that has taken every message of three online devices and one offline."""
    _rollouts(tmp_path / "deploy", fleet_name)
    coordinator = start_coordinator(None, None, None, "--rollouts", str(tmp_path / "deploy"))
    sent: dict[str, list[float]] = {}
    for name, latencies in LATENCIES.items():
        d = fake_device(name)
        d.status(mode=MODES[name], bundle={"name": "digits", "version": "8", "id": "bid8"})
        for i, ms in enumerate(latencies):
            d.telemetry(ms, temperature_c=30.0 + i, mode=MODES[name])
            time.sleep(0.01)  # distinct timestamps per point
        sent[name] = latencies
    fake_device("m-d").status(state="offline")
    n = sum(len(v) for v in LATENCIES.values())
    wait_until(lambda: coordinator.get("/api/stats")["registry"]["telemetry"] == n, 10,
               f"{n} telemetry messages in the registry")
    wait_until(lambda: len(coordinator.devices()) == 4, 10, "4 devices")
    return coordinator


def test_metrics_count_what_the_devices_sent(fed):
    fam = _families(fed.get("/metrics"))
    assert fam["edgekit_devices_online"][0].value == 3
    assert fam["edgekit_devices_total"][0].value == 4
    by_mode = {s.labels["mode"]: s.value for s in fam["edgekit_devices_by_mode"]}
    assert by_mode == {"performance": 1, "eco": 2}

    hist = {(s.name, s.labels.get("le")): s.value for s in
            fam["edgekit_device_inference_latency_seconds"]}
    every = [ms for v in LATENCIES.values() for ms in v]
    assert hist[("edgekit_device_inference_latency_seconds_count", None)] == len(every)
    assert hist[("edgekit_device_inference_latency_seconds_sum", None)] == pytest.approx(
        sum(every) / 1e3)
    for le, want in (("0.0005", 1), ("0.001", 4), ("0.0025", 5), ("0.005", 6), ("0.05", 7),
                     ("1", 8), ("2.5", 8), ("+Inf", 9)):
        assert hist[("edgekit_device_inference_latency_seconds_bucket", le)] == want, le

    rollouts = {s.labels["state"]: s.value for s in fam["edgekit_rollouts"]}
    assert rollouts == {"running": 0, "halted": 1, "done": 1, "cancelled": 0}  # own fleet only
    devices = {(s.labels["version"], s.labels["state"]): s.value
               for s in fam["edgekit_rollout_devices"] if s.value}
    assert devices == {("7", "failed"): 1, ("7", "skipped"): 2, ("8", "succeeded"): 3}
    assert {s.labels["outcome"] for s in fam["edgekit_offload"]} >= {"requests", "completed"}


def test_history_and_rollouts_api(fed):
    history = fed.get("/api/history?device=m-a&device=m-c&device=nobody")
    assert sorted(history) == ["m-a", "m-c"]
    assert history["m-a"]["latency_ms_p50"] == LATENCIES["m-a"]
    assert history["m-a"]["temperature_c"] == [30.0, 31.0, 32.0, 33.0]
    assert history["m-a"]["mode"] == ["performance"] * 4
    ts = history["m-a"]["ts"]
    assert ts == sorted(ts) and 0 < ts[-1] - ts[0] < 10
    assert sorted(fed.get("/api/history")) == ["m-a", "m-b", "m-c"]  # m-d sent no telemetry

    halted, done = fed.get("/api/rollouts")
    assert (halted["version"], halted["status"], halted["waves"]) == ("7", "halted", 2)
    assert halted["failed"] == [{"device": "m-a", "reason": "selftest_failed: no runtime"}]
    assert halted["states"]["skipped"] == 2 and halted["devices"] == 3
    assert (done["status"], done["states"]["succeeded"]) == ("done", 3)


def test_only_the_dashboard_files_are_served(fed):
    assert _status_code(fed.url + "/static/dashboard.js") == 200
    for path in ("/static/server.py", "/static/../server.py", "/static/%2e%2e/server.py",
                 "/static/", "/static//etc/passwd", "/server.py", "/static/uPlot.LICENSE/"):
        assert _status_code(fed.url + path) == 404, path
    with urllib.request.urlopen(fed.url + "/", timeout=5) as resp:
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert b"/static/uPlot.iife.min.js" in resp.read()


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bedgekit_[a-zA-Z0-9_]+", expr))


def test_grafana_sample_uses_only_metrics_the_coordinator_exports(fed):
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 8 and any("histogram_quantile(0.95" in e for e in exprs)
    scraped = {s.name for samples in _families(fed.get("/metrics")).values() for s in samples}
    used = set().union(*map(_metric_names, exprs))
    assert used and used <= scraped, sorted(used - scraped)
    kinds = {p["type"] for p in dashboard["panels"]}
    assert kinds <= {"stat", "timeseries", "bargauge"}


def test_mode_labels_and_rollout_state_stay_bounded(tmp_path):
    from edgekit.fleet.coordinator.metrics import MAX_MODES, bounded_modes
    from edgekit.fleet.coordinator.rollouts import RolloutView

    modes = {f"forged-{i:03d}" + "x" * 100: 1 for i in range(500)} | {"eco": 7}
    bounded = bounded_modes(modes)
    assert len(bounded) == MAX_MODES + 1 and bounded["eco"] == 7
    assert bounded["other"] == 500 - (MAX_MODES - 1) and max(map(len, bounded)) == 64
    assert sum(bounded.values()) == sum(modes.values())

    assert RolloutView(tmp_path / "none", "lab").summaries() == []
    (tmp_path / "rollouts.sqlite").write_bytes(b"not a database" * 100)
    assert RolloutView(tmp_path, "lab").summaries() == []  # logged, not raised into /metrics

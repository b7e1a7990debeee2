"""The dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright through
``executable_path``): two agent processes and one hostile fake device on a real Mosquitto, a
coordinator subprocess, a rollout in the deploy state. The page shows the devices, its charts
gain points while it is open, device-sent markup stays text, and a screenshot is taken."""

from __future__ import annotations

import shutil
import struct
import time

import pytest
from playwright.sync_api import sync_playwright

from edgekit.fleet.deploy.rollout import RolloutOptions
from edgekit.fleet.deploy.state import StateDB

from .conftest import wait_until

pytestmark = pytest.mark.host
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE = "<img src=x onerror=alert(1)>"
SCREENSHOT_COPY = "/tmp/dashboard.png"


def _rollout(folder, fleet: str) -> str:
    db = StateDB(folder)
    try:
        r = db.create(fleet, "v2.ekb", "ab" * 32, "bid2", "2", RolloutOptions(waves=(40.0, 100.0)),
                      [["cam-1", "evil"], ["cam-2"]])
        db.set_device(r.id, "cam-1", state="succeeded")
        db.set_device(r.id, "evil", state="failed", reason=f"selftest_failed: {HOSTILE}")
        db.update(r.id, wave=1)
        return r.id
    finally:
        db.close()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _wait_js(page, expression: str, timeout_s: float = 30.0) -> None:
    """Poll a page expression from here. (Playwright's wait_for_function re-evaluates a string
    with eval() in the page once it has to poll, which the dashboard's CSP rightly refuses.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true in {timeout_s:g} s: {expression}"
        time.sleep(0.1)


def _points(page, chart: str) -> int:
    return int(page.get_attribute(f"#chart-{chart}", "data-points"))


def test_dashboard_in_chromium(fleet_agent, fake_device, start_coordinator, fleet_name, tmp_path):
    rollout = _rollout(tmp_path / "deploy", fleet_name)
    coordinator = start_coordinator(None, None, None, "--rollouts", str(tmp_path / "deploy"))
    for name, hardware in (("cam-1", "coral"), ("cam-2", "pi4")):
        fleet_agent(name, hardware, load_rate=5.0)
    evil = fake_device("evil")
    evil.status(mode=HOSTILE, bundle={"name": HOSTILE, "version": HOSTILE, "id": "x"})
    evil.telemetry(3.0, mode=HOSTILE)
    wait_until(lambda: all(coordinator.devices().get(n, {}).get("latency_ms_p50") is not None
                           for n in ("cam-1", "cam-2", "evil")), 60,
               "telemetry with latency from both agents")

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
                    if r.status >= 400 else None)
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
            page.goto(coordinator.url + "/")
            _wait_js(page, "document.querySelectorAll('#devices tbody tr').length === 3")
            cells = page.locator("#devices tbody td:first-child").all_inner_texts()
            assert cells == ["cam-1", "cam-2", "evil"]
            assert page.inner_text("#summary") == "3 of 3 devices online"

            _wait_js(page, "Number(document.querySelector('#chart-latency').dataset.points) >= 4")
            first = {c: _points(page, c) for c in ("latency", "temperature", "mode")}
            time.sleep(3.5)  # agents report every 0.5 s; the page polls every 1.5 s
            evil.telemetry(4.0, mode=HOSTILE)
            _wait_js(page, "Number(document.querySelector('#chart-latency').dataset.points) >= "
                     f"{first['latency'] + 4}")
            later = {c: _points(page, c) for c in ("latency", "temperature", "mode")}
            assert all(later[c] > first[c] for c in first), (first, later)
            drawn = page.evaluate("window.edgekitDashboard.charts.latency.plot.data.length")
            assert drawn == 4  # x plus one series per device

            row = page.locator("#devices tbody tr", has_text="evil")
            texts = row.locator("td").all_inner_texts()
            assert texts[2] == HOSTILE and texts[6] == f"{HOSTILE} v{HOSTILE}"
            assert page.evaluate("document.querySelectorAll('img').length") == 0
            box = page.locator(f".rollout[data-rollout='{rollout}']")
            assert "wave 2/2" in box.inner_text() and f"evil: selftest_failed: {HOSTILE}" in \
                box.locator("li").all_inner_texts()
            assert page.inner_text("#offload").count("\n") >= 8

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    data = shot.read_bytes()
    width, height = _png_size(data)
    assert width == 1400 and 600 <= height <= 4000 and len(data) > 20_000, (width, height, len(data))
    shutil.copyfile(shot, SCREENSHOT_COPY)
    print(f"\ndashboard screenshot {width}x{height}, {len(data)} bytes: {SCREENSHOT_COPY}; "
          f"chart points {first} -> {later}")

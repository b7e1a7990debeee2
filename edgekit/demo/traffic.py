"""Inference traffic: real digits images posted to each device's ``POST /v1/infer``.

One thread per device, paced at a rate that can change while it runs (``None``: as fast as the
device answers). Every request ends in exactly one bucket: ``local`` (the device answered from
its own model), ``offloaded`` (answered, ``served_by`` another device), ``refused`` (503: the
device's mode rate-limited it, an explicit answer) or ``lost`` (no answer, or any other
failure). Predictions are checked against the test labels.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np

from ..examples import EXAMPLES

TIMEOUT_S = 10.0


@dataclass
class Counts:
    local: int = 0
    offloaded: int = 0
    refused: int = 0
    lost: int = 0
    correct: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.local + self.offloaded + self.refused + self.lost

    @property
    def answered(self) -> int:
        return self.local + self.offloaded


def digits_samples() -> tuple[list[bytes], np.ndarray]:
    """Request bodies for the example's test images, and their labels."""
    ex = EXAMPLES["digits"]
    images = np.load(ex.eval)["image"]
    labels = np.load(ex.labels)
    bodies = [json.dumps({"inputs": {"image": img[None].tolist()}}).encode() for img in images]
    return bodies, labels


class Traffic:
    """Paced request loops, one per device; ``rates`` may change while they run."""

    def __init__(self, devices: dict[str, str]) -> None:
        self.urls = devices  # name -> http://host:port
        self.counts = {name: Counts() for name in devices}
        self.rates: dict[str, float | None] = {name: 0.0 for name in devices}
        self._bodies, self._labels = digits_samples()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(name,), daemon=True,
                                          name=f"demo-traffic-{name}") for name in devices]

    def start(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(TIMEOUT_S + 1)

    def set_rate(self, name: str, rate: float | None) -> None:
        self.rates[name] = rate

    def set_all(self, rate: float | None) -> None:
        for name in self.rates:
            self.rates[name] = rate

    def totals(self) -> Counts:
        with self._lock:
            out = Counts()
            for c in self.counts.values():
                out.local += c.local
                out.offloaded += c.offloaded
                out.refused += c.refused
                out.lost += c.lost
                out.correct += c.correct
                out.errors += c.errors[:3]
            return out

    def _loop(self, name: str) -> None:
        i, next_at = 0, time.monotonic()
        while not self._stop.is_set():
            rate = self.rates[name]
            if rate is not None and rate <= 0:
                self._stop.wait(0.05)
                next_at = time.monotonic()
                continue
            if rate is not None:
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                next_at = max(next_at + 1.0 / rate, time.monotonic() - 1.0)
            k = i % len(self._bodies)
            outcome, prediction, error = self._one(name, self._bodies[k])
            self._record(name, outcome, prediction == int(self._labels[k]), error)
            i += 1

    def _record(self, name: str, outcome: str, correct: bool, error: str) -> None:
        with self._lock:
            c = self.counts[name]
            setattr(c, outcome, getattr(c, outcome) + 1)
            if outcome in ("local", "offloaded") and correct:
                c.correct += 1
            if error and len(c.errors) < 5:
                c.errors.append(error)

    def _one(self, name: str, body: bytes) -> tuple[str, int | None, str]:
        """(outcome, predicted class or None, error text for a lost request)."""
        req = urllib.request.Request(f"{self.urls[name]}/v1/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                answer = json.loads(resp.read())
            logits = np.asarray(next(iter(answer["outputs"].values())), dtype=np.float64)
        except urllib.error.HTTPError as exc:
            return ("refused", None, "") if exc.code == 503 else ("lost", None, f"HTTP {exc.code}")
        except (OSError, ValueError, KeyError, StopIteration) as exc:
            return "lost", None, f"{type(exc).__name__}: {exc}"
        # Builds without offload say nothing about who served; with it, "served_by" names the
        # device whose model ran (this one, or a worker the coordinator chose).
        served_by = answer.get("served_by") or name
        outcome = "local" if served_by in (name, "local") else "offloaded"
        return outcome, int(logits.reshape(-1).argmax()), ""

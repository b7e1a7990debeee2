"""MQTT telemetry with store-and-forward.

Every outbound message is first written to :class:`Outbox`, a bounded SQLite queue (WAL, on
disk) that assigns the payload's ``seq``. :class:`Telemetry` owns one paho-mqtt client on one
thread: it connects (TLS and username/password optional), reconnects with exponential backoff
and jitter, and while connected hands queued messages to paho in ``seq`` order, a window at a
time, deleting each row when its PUBACK arrives. Messages handed to paho and not yet
acknowledged when the link drops are re-sent by paho after reconnecting (flagged DUP); rows
left over from a previous process are sent again after a restart. Receivers therefore see every
message at least once and in order, and drop repeats by ``seq``.

The queue is :mod:`.outbox`; the link's settings are :class:`~edgekit_agent.config.MqttConfig`.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import MqttConfig
from ..errors import TransportError
from .outbox import QOS, Outbox
from .schema import Topics, encode, event_payload, status_payload, telemetry_payload

log = logging.getLogger("edgekit_agent.telemetry")


class Backoff:
    """Exponential backoff with "equal jitter": delay in [d/2, d], d doubling up to the cap."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s, self.max_s, self.attempt = min_s, max(max_s, min_s), 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.max_s, self.min_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class Telemetry:
    """Publishes ``status``/``telemetry``/``event`` through the outbox; receives ``cmd`` payloads."""

    def __init__(self, options: MqttConfig, topics: Topics, outbox: Outbox, *,
                 status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.options, self.topics, self.outbox = options, topics, outbox
        self.commands: queue.Queue[bytes] = queue.Queue(maxsize=256)
        self.connects = 0
        self.last_error = ""
        self._status = status or (lambda: {})
        self._stop = threading.Event()
        self._flush_deadline = 0.0
        self._connected = False
        self._inflight: dict[int, Any] = {}
        self._cursor = 0
        self._backoff = Backoff(options.reconnect_min_s, options.reconnect_max_s)
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="edgekit-mqtt", daemon=True)

    # -- public API (any thread) --

    @property
    def connected(self) -> bool:
        return self._connected

    def link_state(self) -> dict[str, Any]:
        """For ``/v1/health``: is the broker link up, how often it came up, the last failure."""
        return {"enabled": True, "connected": self._connected,
                "broker": f"{self.options.host}:{self.options.port}", "connects": self.connects,
                "last_error": self.last_error or None, "queued": self.outbox.depth}

    @property
    def device(self) -> str:
        return self.topics.device

    def start(self) -> None:
        self._thread.start()

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Send what is queued (up to the timeout), then disconnect cleanly; queued rows stay on disk."""
        self._flush_deadline = time.monotonic() + flush_timeout_s
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(flush_timeout_s + 5.0)

    def _current_status(self) -> dict[str, Any]:
        try:
            return dict(self._status())
        except Exception as exc:  # the provider is the daemon's; a bug there must not cut the link
            log.error("status provider failed: %s", exc)
            return {}

    def publish_status(self, state: str, **body: Any) -> int:
        current = self._current_status()
        return self.outbox.put(self.topics.status, lambda seq: status_payload(
            self.device, seq, state, **{**current, **body}), retain=True)

    def publish_event(self, kind: str, message: str, **kwargs: Any) -> int:
        log.info("event %s: %s", kind, message)
        return self.outbox.put(self.topics.event,
                               lambda seq: event_payload(self.device, seq, kind, message, **kwargs))

    def publish_telemetry(self, body: dict[str, Any]) -> int:
        """Queue one telemetry message; the queue's drop counts are added to it here."""
        dropped, dropped_total = self.outbox.take_dropped()
        queue_info = {"depth": self.outbox.depth, "dropped": dropped, "dropped_total": dropped_total,
                      "connected": self._connected, "connects": self.connects}
        return self.outbox.put(self.topics.telemetry, lambda seq: telemetry_payload(
            self.device, seq, **{**body, "queue": queue_info}))

    def publish_to(self, topic: str, payload: dict[str, Any]) -> int:
        """Queue a payload for another topic (e.g. a command's ``reply_to``); ``seq`` is filled in."""
        if any(c in topic for c in "+#"):
            raise TransportError(f"cannot publish to a topic filter: {topic!r}")
        return self.outbox.put(topic, lambda seq: {**payload, "seq": seq})

    # -- the network thread --

    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt

        opts = self.options
        protocol = mqtt.MQTTv5 if opts.protocol == "5" else mqtt.MQTTv311
        client_id = opts.client_id or f"edgekit-{self.topics.fleet}-{self.topics.device}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                             reconnect_on_failure=False)
        client.enable_logger(logging.getLogger("edgekit_agent.paho"))
        client.max_inflight_messages_set(max(opts.inflight, 1))
        if opts.tls:
            try:
                client.tls_set(ca_certs=str(opts.ca_file) if opts.ca_file else None)
            except (OSError, ValueError) as exc:
                raise TransportError(f"cannot set up TLS: {exc}") from None
        if opts.username:
            client.username_pw_set(opts.username, opts.password or opts.read_password())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.connect_async(opts.host, opts.port, keepalive=opts.keepalive)
        return client

    def _set_will(self) -> None:
        """The retained ``offline`` the broker publishes if we vanish; names the bundle we ran."""
        bundle = self._current_status().get("bundle")
        will = status_payload(self.device, 0, "offline", will=True, bundle=bundle)
        self._client.will_set(self.topics.status, encode(will), qos=QOS, retain=True)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            log.warning(self.last_error)
            return
        self._connected = True
        self.connects += 1
        self._backoff.reset()
        log.info("MQTT connected to %s:%d%s", self.options.host, self.options.port,
                 f" (reconnect {self.connects - 1})" if self.connects > 1 else "")
        client.subscribe(self.topics.cmd, qos=QOS)
        self.publish_status("online")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._connected and not self._stop.is_set():
            log.warning("MQTT link to %s:%d lost (%s); reconnecting, messages wait in the queue",
                        self.options.host, self.options.port, reason_code)
        self._connected = False

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic != self.topics.cmd:
            return
        try:
            self.commands.put_nowait(bytes(message.payload))
        except queue.Full:
            log.warning("command queue full: dropped a command")

    def _run(self) -> None:
        import paho.mqtt.client as mqtt

        socket_open, reported = False, ""
        while not self._stop.is_set():
            try:
                if not socket_open:
                    self._set_will()
                    self._client.reconnect()
                    socket_open = True
                ok = self._client.loop(timeout=0.05) == mqtt.MQTT_ERR_SUCCESS
                if ok and self._connected:
                    self._pump()
            except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS handshake
                self.last_error = f"cannot reach {self.options.host}:{self.options.port}: {exc}"
                ok = False
            except Exception as exc:  # a bug or a full disk: log it, drop the link, try again later
                log.exception("MQTT link failed")
                self.last_error = f"{type(exc).__name__}: {exc}"
                ok = False
            if not ok:  # reconnect() closes what is left of the socket; paho keeps unacked messages
                socket_open, self._connected = False, False
                delay = self._backoff.next()
                if self.last_error and self.last_error != reported:  # once per new failure
                    log.warning("MQTT: %s; retrying (next in %.1f s)", self.last_error, delay)
                    reported = self.last_error
                self._stop.wait(delay)
        self._finish(socket_open)

    def _pump(self) -> None:
        done = [seq for seq, info in self._inflight.items() if info.is_published()]
        for seq in done:
            del self._inflight[seq]
        self.outbox.ack(done)
        room = self.options.inflight - len(self._inflight)
        if room <= 0:
            return
        for row in self.outbox.peek(self._cursor, room):
            info = self._client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
            self._inflight[row.seq] = info
            self._cursor = self.outbox.protect_upto = row.seq

    def _finish(self, socket_open: bool) -> None:
        """Flush what is queued while the link is up and time remains, then disconnect cleanly."""
        import paho.mqtt.client as mqtt

        while (socket_open and self._connected and time.monotonic() < self._flush_deadline
               and (self.outbox.depth > 0 or self._inflight)):
            if self._client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                return
            self._pump()
        if socket_open:
            self._client.disconnect()  # written at once: no loop thread of paho's own

"""`edgekit flash BUNDLE --to URI`: parse the URI, check the bundle fits the transport, dispatch.

    ssh://[user@]host[:port]/STORE    a Linux board (Raspberry Pi, Coral Dev Board) over OpenSSH
    dir://PATH                        a store on a mounted card or rootfs, written on this host
    serial://DEVICE[?baud=N]          a microcontroller running the edgekit update protocol

``SCHEMES`` is the one registry: each entry names the bundle families it deploys and the function
that does it, so the CLI's help, the family check and the dispatch cannot disagree.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.bundle.reader import Bundle, open_bundle
from edgekit_agent.bundle.signing import load_public_key

from ..errors import FlashError
from . import dirstore, ssh
from .result import DeviceState, FlashResult
from .serial import flash_serial

Progress = Callable[[int, int], None]
DEFAULT_BAUD = 921600
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class FlashUri:
    scheme: str
    text: str
    path: str = ""                   # ssh: remote store; dir: local store; serial: device
    host: str = ""
    port: int | None = None
    user: str | None = None
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FlashOptions:
    key: Path | None = None
    ssh_options: tuple[str, ...] = ()
    agent_cmd: str = ssh.DEFAULT_AGENT_CMD
    timeout_s: float = DEFAULT_TIMEOUT_S
    progress: Progress | None = None


Flasher = Callable[[Path, FlashUri, FlashOptions], DeviceState]


@dataclass(frozen=True)
class Scheme:
    name: str
    families: tuple[str, ...]
    flasher: Flasher
    params: tuple[str, ...] = ()
    example: str = ""


def _flash_ssh(bundle: Path, uri: FlashUri, opts: FlashOptions) -> DeviceState:
    target = ssh.SshTarget(host=uri.host, store=uri.path, user=uri.user, port=uri.port,
                           options=opts.ssh_options, agent_cmd=opts.agent_cmd,
                           connect_timeout_s=opts.timeout_s)
    return ssh.flash_ssh(bundle, target, key=opts.key, progress=opts.progress)


def _flash_dir(bundle: Path, uri: FlashUri, opts: FlashOptions) -> DeviceState:
    return dirstore.flash_dir(bundle, Path(uri.path).expanduser(), key=opts.key,
                              progress=opts.progress)


def _flash_serial(bundle: Path, uri: FlashUri, opts: FlashOptions) -> DeviceState:
    baud = int(uri.params.get("baud", DEFAULT_BAUD))
    report = flash_serial(bundle, uri.path, baud=baud, key=opts.key, progress=opts.progress,
                          timeout_s=opts.timeout_s)
    return DeviceState.from_dict(report, install=report)


SCHEMES: dict[str, Scheme] = {
    "ssh": Scheme("ssh", ("cpu", "edgetpu"), _flash_ssh, example="ssh://pi@raspberrypi.local/var/lib/edgekit"),
    # ethos-u: a Linux board with the NPU (i.MX 93, Corstone-1000) reads an agent store too
    "dir": Scheme("dir", ("cpu", "edgetpu", "ethos-u"), _flash_dir,
                  example="dir:///media/rootfs/var/lib/edgekit"),
    "serial": Scheme("serial", ("mcu", "ethos-u"), _flash_serial, params=("baud",),
                     example="serial:///dev/ttyACM0?baud=921600"),
}


def parse_uri(text: str) -> FlashUri:
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise FlashError(f"unknown flash target {text!r}: use one of "
                         + ", ".join(s.example for s in SCHEMES.values()))
    if scheme == "ssh":
        return _parse_ssh(text)
    query = ""
    if SCHEMES[scheme].params:  # a folder name may hold a '?'; only query-taking schemes split
        rest, _, query = rest.partition("?")
    params = _params(text, scheme, query)
    if not rest:
        raise FlashError(f"{text!r} names no {'device' if scheme == 'serial' else 'folder'} "
                         f"(e.g. {SCHEMES[scheme].example})")
    return FlashUri(scheme=scheme, text=text, path=rest, params=params)


def _params(text: str, scheme: str, query: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise FlashError(f"{text!r}: malformed query {query!r}") from None
    allowed = SCHEMES[scheme].params
    params = dict(pairs)
    for key in params:
        if key not in allowed:
            raise FlashError(f"{text!r}: unknown parameter {key!r} for {scheme}:// "
                             f"(allowed: {', '.join(allowed) or 'none'})")
    if "baud" in params and not (params["baud"].isdigit() and int(params["baud"]) > 0):
        raise FlashError(f"{text!r}: baud must be a positive integer, not {params['baud']!r}")
    return params


def _parse_ssh(text: str) -> FlashUri:
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise FlashError(f"{text!r}: the port must be a number from 1 to 65535") from None
    host = parts.hostname or ""
    if not host or host.startswith("-"):
        raise FlashError(f"{text!r} names no host (e.g. {SCHEMES['ssh'].example})")
    if parts.query or parts.fragment:
        raise FlashError(f"{text!r}: ssh:// takes no query or fragment")
    store = urllib.parse.unquote(parts.path)
    if store.startswith("/~/"):  # ssh://host/~/store: a store under the remote user's home
        store = store[1:]
    if store in ("", "/"):
        raise FlashError(f"{text!r} names no store folder on the device "
                         f"(e.g. {SCHEMES['ssh'].example})")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    return FlashUri(scheme="ssh", text=text, path=store, host=host, port=port, user=user)


def flash(bundle_path: str | Path, to: str, opts: FlashOptions = FlashOptions()) -> FlashResult:
    """Check everything that can be checked here, then hand the bundle to the scheme's flasher."""
    uri = parse_uri(to)
    bundle_path = Path(bundle_path)
    bundle = _checked_bundle(bundle_path, opts.key)
    _check_family(bundle, SCHEMES[uri.scheme], uri)
    t0 = time.monotonic()
    state = SCHEMES[uri.scheme].flasher(bundle_path, uri, opts)
    return FlashResult(uri=uri.text, scheme=uri.scheme, bundle=str(bundle_path),
                       bytes=bundle_path.stat().st_size, seconds=time.monotonic() - t0,
                       device=state)


def _checked_bundle(path: Path, key: Path | None) -> Bundle:
    """Refuse here what the device would refuse anyway, before anything travels."""
    if key is not None:
        load_public_key(key)
    return open_bundle(path, key)


def _check_family(bundle: Bundle, scheme: Scheme, uri: FlashUri) -> None:
    family = bundle.manifest.family
    if family in scheme.families:
        return
    others = [s.name for s in SCHEMES.values() if family in s.families]
    hint = f"; use {' or '.join(o + '://' for o in others)}" if others else ""
    raise FlashError(f"{bundle.path.name} is for the {family} family (target {bundle.manifest.target}); "
                     f"{scheme.name}:// deploys {', '.join(scheme.families)} bundles{hint}")


def describe_schemes() -> list[dict[str, Any]]:
    return [{"scheme": s.name, "families": list(s.families), "example": s.example}
            for s in SCHEMES.values()]

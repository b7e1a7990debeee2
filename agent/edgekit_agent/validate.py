"""One validator for everything read from TOML or JSON (configs, policies, sensor options,
manifests, MQTT payloads, target profiles), with one message form:

    <file>: <key>: <value> is not <what> (allowed: <a>, <b>, ...)

``<value>`` is the offending value's ``repr`` cut to 40 characters, or ``missing`` when a
required key is absent; ``(allowed: ...)`` is there when the choices are finite. The error
class is the caller's (``ConfigError`` by default, ``BundleError`` for manifests,
``TransportError`` / ``CommandError`` for wire payloads) and carries ``source``, ``key``,
``value`` and ``allowed`` as attributes.

A target profile reader, for example::

    t = Table(data, "firmware_targets/rpi4.toml")
    t.only(("family", "flash_bytes", "power", "dtypes"))
    family = t.choice("family", tuple(FAMILIES))            # required
    flash = t.integer("flash_bytes", lo=1)
    power = t.table("power")                                # {} when absent
    idle_w = power.number("idle_w", 0.0, lo=0.0)            # key reported as "power.idle_w"
    dtypes = t.items("dtypes", str, allowed=("int8", "float32"))
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, EdgekitError

NUMBER = (int, float)
_KIND_NAMES = {str: "a string", int: "an integer", NUMBER: "a number", bool: "true or false",
               list: "a list", dict: "a table", float: "a number"}
REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()


def problem(source: str, key: str, value: Any, what: str, allowed: Any = None, *,
            missing: bool = False) -> str:
    """The one message form (see the module docstring)."""
    shown = "missing" if missing else f"{value!r:.40}"
    where = f"{source}: " if source else ""
    tail = f" (allowed: {format_allowed(allowed)})" if allowed is not None else ""
    return f"{where}{key or '<top>'}: {shown} is not {what}{tail}"


def format_allowed(allowed: Any) -> str:
    if isinstance(allowed, (list, tuple, set, frozenset)) or isinstance(allowed, Mapping):
        items = sorted(allowed, key=_show)
        return ", ".join(_show(a) for a in items) or "none"
    return str(allowed)


def _show(a: Any) -> str:
    return ("true" if a else "false") if isinstance(a, bool) else str(a)


def invalid(source: str, key: str, value: Any, what: str, allowed: Any = None, *,
            missing: bool = False, error: type[EdgekitError] = ConfigError) -> EdgekitError:
    """The exception to raise (``raise invalid(...)``), with the parts as attributes."""
    exc = error(problem(source, key, value, what, allowed, missing=missing))
    exc.source, exc.key, exc.value, exc.allowed = source, key, value, allowed  # type: ignore[attr-defined]
    return exc


def kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple) and kind != NUMBER:
        return " or ".join(kind_name(k) for k in kind)
    return _KIND_NAMES.get(kind, getattr(kind, "__name__", str(kind)))  # type: ignore[arg-type]


def has_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    """JSON/TOML typing: a bool is not a number, and numbers are finite."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, kinds)


class Table:
    """Typed reads from one table of a document; every refusal is ``invalid(...)``.

    ``key`` is the table's dotted path inside the file ("" at the top); ``base`` resolves
    relative paths. A key whose value is ``None`` (JSON null) counts as absent.
    """

    def __init__(self, data: Any, source: str, key: str = "", *,
                 error: type[EdgekitError] = ConfigError, base: Path | None = None) -> None:
        self.source, self.key, self.error, self.base = source, key, error, base
        if not isinstance(data, Mapping):
            raise self.fail("", data, "a table")
        self.data: Mapping[str, Any] = data

    def dotted(self, key: str) -> str:
        if not key:
            return self.key
        return f"{self.key}.{key}" if self.key and not key.startswith("[") else f"{self.key}{key}"

    def fail(self, key: str, value: Any, what: str, allowed: Any = None, *,
             missing: bool = False) -> EdgekitError:
        return invalid(self.source, self.dotted(key), value, what, allowed, missing=missing,
                       error=self.error)

    def __contains__(self, key: str) -> bool:
        return self.data.get(key) is not None

    def only(self, allowed: tuple[str, ...] | list[str]) -> None:
        for key, value in self.data.items():
            if key not in allowed:
                raise self.fail(key, value, "a known key", allowed)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = REQUIRED) -> Any:
        """``data[key]`` of the JSON type ``kind``; ``default`` when absent (REQUIRED: refuse)."""
        value = self.data.get(key)
        if value is None:
            if default is REQUIRED:
                raise self.fail(key, None, kind_name(kind), missing=True)
            return default
        if not has_kind(value, kind):
            raise self.fail(key, value, kind_name(kind))
        return value

    def table(self, key: str, default: Any = None) -> Table:
        """A sub-table (an empty one when absent)."""
        value = self.data.get(key)
        if value is None:
            value = {} if default is None else default
        if not isinstance(value, Mapping):
            raise self.fail(key, value, "a table")
        return Table(value, self.source, self.dotted(key), error=self.error, base=self.base)

    def string(self, key: str, default: Any = REQUIRED, *, nonempty: bool = False,
               pattern: re.Pattern[str] | None = None, what: str = "") -> Any:
        value = self.get(key, str, default)
        if value is default and default is not REQUIRED:
            return value
        if (nonempty and not value.strip()) or (pattern is not None and not pattern.match(value)):
            raise self.fail(key, value, what or "a non-empty string")
        return value

    def choice(self, key: str, allowed: Any, default: Any = REQUIRED) -> Any:
        value = self.data.get(key)
        if value is None and default is not REQUIRED:
            return default
        if value is None:
            raise self.fail(key, None, "one of the allowed values", allowed, missing=True)
        if isinstance(value, bool) or value not in allowed:
            raise self.fail(key, value, "one of the allowed values", allowed)
        return value

    def boolean(self, key: str, default: Any = REQUIRED) -> Any:
        value = self.data.get(key)
        if value is None and default is not REQUIRED:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, value, "true or false", [True, False], missing=value is None)
        return value

    def integer(self, key: str, default: Any = REQUIRED, *, lo: float = -math.inf,
                hi: float = math.inf) -> Any:
        return self._number(key, default, lo, hi, int, "an integer")

    def number(self, key: str, default: Any = REQUIRED, *, lo: float = -math.inf,
               hi: float = math.inf) -> Any:
        value = self._number(key, default, lo, hi, NUMBER, "a number")
        return value if value is None or value is default else float(value)

    def _number(self, key: str, default: Any, lo: float, hi: float, kind: Any, noun: str) -> Any:
        value = self.data.get(key)
        if value is None and default is not REQUIRED:
            return default
        if value is None or not has_kind(value, kind) or not lo <= value <= hi:
            raise self.fail(key, value, f"{noun}{_range(lo, hi)}", missing=value is None)
        return value

    def path(self, key: str, default: Any = REQUIRED) -> Any:
        value = self.data.get(key)
        if value is None and default is not REQUIRED:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, value, "a non-empty path", missing=value is None)
        p = Path(value).expanduser()
        return p if p.is_absolute() or self.base is None else self.base / p

    def items(self, key: str, kind: type | tuple[type, ...], default: Any = REQUIRED, *,
              allowed: Any = None) -> Any:
        """A list whose items all have the JSON type ``kind`` (and, if given, are ``allowed``)."""
        value = self.get(key, list, default)
        if value is default and default is not REQUIRED:
            return value
        for i, item in enumerate(value):
            if not has_kind(item, kind):
                raise self.fail(f"{key}[{i}]", item, kind_name(kind))
            if allowed is not None and item not in allowed:
                raise self.fail(f"{key}[{i}]", item, "one of the allowed values", allowed)
        return tuple(value)

    def mapping(self, key: str, kind: type | tuple[type, ...], default: Any = REQUIRED) -> Any:
        """A table whose values all have the JSON type ``kind``."""
        value = self.get(key, dict, default)
        if value is default and default is not REQUIRED:
            return value
        for k, item in value.items():
            if not has_kind(item, kind):
                raise self.fail(f"{key}.{k}", item, kind_name(kind))
        return dict(value)


def _range(lo: float, hi: float) -> str:
    if lo == -math.inf and hi == math.inf:
        return ""
    if hi == math.inf:
        return f" >= {_num(lo)}"
    if lo == -math.inf:
        return f" <= {_num(hi)}"
    return f" in {_num(lo)}..{_num(hi)}"


def _num(x: float) -> str:
    """A bound as written: integers exactly (64 MiB is 67108864, not 6.71089e+07)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e19 else f"{x:g}"


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (JSON has no NaN or infinity)")


def loads_strict(data: str | bytes) -> Any:
    """``json.loads`` that refuses NaN/Infinity and duplicate keys: two readers of the same bytes
    (the signer's and the device's) can then never see different values. Raises ValueError
    (also for bad UTF-8 and over-long integers) or RecursionError."""
    return json.loads(data, object_pairs_hook=_unique_object, parse_constant=_no_constant)


# C0/C1 controls and the bidi overrides: text from a bundle or the wire must not steer a terminal.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(value: Any) -> str:
    """``str(value)`` with control characters shown as escapes (``\\x1b``), for terminals."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))

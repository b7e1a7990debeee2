"""The one error hierarchy of edgekit (host and device). Each class means one thing.

    EdgekitError                  anything edgekit refuses, with a one-line message
    ├── BundleError               a bundle cannot be read or trusted
    │   ├── SignatureError        bad, missing or unexpected signature
    │   └── IntegrityError        a member's hash or size differs, or members are missing/extra
    ├── ConfigError               a target profile, policy or config file is invalid
    ├── ModelError                a model cannot be read, run or converted
    │   └── UnsupportedOpError    an op the runtime/target cannot run
    ├── CalibrationError          calibration or evaluation data do not fit the model
    ├── BudgetError               no recipe fits the target's budgets
    ├── RuntimeBackendError       no runtime can execute the bundle, or inference failed
    ├── InputError                inference inputs have unknown names, wrong shapes or dtypes
    ├── RateLimited               inference refused for now by the mode's rate limit or duty cycle
    ├── StoreError                the on-device bundle store refused an install or rollback
    ├── CommandError              a command is unknown, malformed, unauthenticated, stale or replayed
    ├── TransportError            MQTT, serial or network input is malformed or unreachable
    │   └── SerialLinkError       a serial device cannot be opened, does not answer, or stops (also a FlashError)
    └── FlashError                a bundle or firmware image could not be put on a device

Library exceptions are mapped at the boundary (``raise ...Error(...) from None``) so that
callers, and the CLIs, only ever see these types. ``http_status`` is what the local HTTP API
answers when a request ends in that error.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""

    http_status = 500


class BundleError(EdgekitError):
    pass


class SignatureError(BundleError):
    pass


class IntegrityError(BundleError):
    pass


class ConfigError(EdgekitError):
    """Names the file, the key, the bad value and (when finite) the allowed values."""

    def __init__(self, message: str, *, source: str = "", key: str = "", value: object = None,
                 allowed: object = None) -> None:
        parts = [f"{source}: " if source else "", message]
        if key:
            parts.append(f" (key '{key}'")
            if value is not None:
                parts.append(f", value {value!r}")
            if allowed is not None:
                parts.append(f", allowed: {_fmt_allowed(allowed)}")
            parts.append(")")
        super().__init__("".join(parts))
        self.source, self.key, self.value, self.allowed = source, key, value, allowed


def _fmt_allowed(allowed: object) -> str:
    if isinstance(allowed, (list, tuple, set, frozenset)):
        return ", ".join(str(a) for a in sorted(allowed, key=str))
    return str(allowed)


class ModelError(EdgekitError):
    pass


class UnsupportedOpError(ModelError):
    pass


class CalibrationError(EdgekitError):
    pass


class BudgetError(EdgekitError):
    pass


class RuntimeBackendError(EdgekitError):
    pass


class InputError(EdgekitError):
    http_status = 400


class RateLimited(EdgekitError):
    http_status = 503


class StoreError(EdgekitError):
    pass


class CommandError(EdgekitError):
    http_status = 400


class TransportError(EdgekitError):
    http_status = 502


def first_line(exc: BaseException) -> str:
    """A library exception as one short line, for messages that must stay one line."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


class FlashError(EdgekitError):
    """`edgekit flash` could not deliver: bad target URI, wrong family, device unreachable or refusing."""


class SerialLinkError(FlashError, TransportError):
    """The serial line to a device: cannot be opened, nobody speaking the protocol, or it went quiet."""

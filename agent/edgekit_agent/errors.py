"""The one error hierarchy of edgekit (host and device).

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
    ├── StoreError                the on-device bundle store refused an install or rollback
    ├── TransportError            MQTT, serial or network input is malformed or unreachable
    │   └── SerialLinkError       a serial device cannot be opened, does not answer, or stops (also a FlashError)
    └── FlashError                a bundle or firmware image could not be put on a device

Library exceptions are mapped at the boundary (``raise ...Error(...) from None``) so that
callers, and the CLIs, only ever see these types.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""


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
    pass


class StoreError(EdgekitError):
    pass


class TransportError(EdgekitError):
    pass


class FlashError(EdgekitError):
    """`edgekit flash` could not deliver: bad target URI, wrong family, device unreachable or refusing."""


class SerialLinkError(FlashError, TransportError):
    """The serial line to a device: cannot be opened, nobody speaking the protocol, or it went quiet."""

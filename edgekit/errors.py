"""edgekit's error hierarchy: defined once in the device package and re-exported here."""

from edgekit_agent.errors import (
    BudgetError,
    BundleError,
    CalibrationError,
    ConfigError,
    EdgekitError,
    FlashError,
    InputError,
    IntegrityError,
    ModelError,
    RuntimeBackendError,
    SignatureError,
    StoreError,
    TransportError,
    UnsupportedOpError,
)

__all__ = ["BudgetError", "BundleError", "CalibrationError", "ConfigError", "EdgekitError",
           "FlashError", "InputError", "IntegrityError", "ModelError", "RuntimeBackendError", "SignatureError",
           "StoreError", "TransportError", "UnsupportedOpError"]

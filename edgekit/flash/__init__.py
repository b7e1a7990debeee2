"""Put bundles on devices: ssh:// (Linux boards), dir:// (mounted cards), serial:// (MCUs)."""

from .result import BundleRef, DeviceState, FlashResult
from .uri import SCHEMES, FlashOptions, FlashUri, flash, parse_uri

__all__ = ["BundleRef", "DeviceState", "FlashOptions", "FlashResult", "FlashUri", "SCHEMES", "flash",
           "parse_uri"]

"""The packer: ingest → doctor → compress/quantize → target compile → evaluate → fit → bundle."""

from .pack import PackOptions, PackResult, pack
from .recipes import LADDER

__all__ = ["LADDER", "PackOptions", "PackResult", "pack"]

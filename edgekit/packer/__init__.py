"""The packer: ingest → doctor → compress/quantize → target compile → evaluate → fit → bundle."""

from .pack import PackOptions, PackResult, pack
from .recipes import LADDER


def list_recipes() -> list[tuple[str, str]]:
    return [(r.name, r.description) for r in LADDER]


__all__ = ["LADDER", "PackOptions", "PackResult", "list_recipes", "pack"]

"""edgekit: pack trained models into signed, measured bundles for small devices."""

from __future__ import annotations

__version__ = "0.1.0"


def pack(model, target, out, **options):
    """Python API mirroring `edgekit pack`; returns a PackResult (``.bundle``, ``.manifest``)."""
    # Deferred: every `import edgekit.<module>` runs this file first, and must not load numpy/onnx.
    from .packer import PackOptions
    from .packer import pack as _pack

    return _pack(PackOptions(model=model, target=target, out=out, **options))

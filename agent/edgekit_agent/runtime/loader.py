"""Load one variant of a verified bundle into a :class:`Runner`, checking the model agrees with
its manifest. The store's self-test and the service's :class:`Agent` both load through here."""

from __future__ import annotations

import numpy as np

from ..bundle.manifest import TensorSpec, Variant
from ..bundle.reader import Bundle
from ..errors import BundleError
from .backends import Backend, edgetpu_available, load_backend
from .runner import Runner


def load_runner(bundle: Bundle, variant: str | None = None, threads: int | None = None,
                host_form: bool = False) -> tuple[Variant, Runner]:
    """Load one variant of a verified bundle and check the model agrees with its manifest.

    ``host_form``: load the variant's host-runnable form instead when its target report names
    one (``selftest_model``: an Ethos-U bundle's int8 model before Vela, for the self-test)."""
    manifest = bundle.manifest
    v = manifest.variant(variant) if variant else manifest.primary
    report = v.target_report
    if host_form and report is not None and report.selftest_model:
        backend = load_backend(bundle.read_checked_model(report.selftest_model, "tflite"), "tflite",
                               threads=threads)
    else:
        backend = _variant_backend(bundle, v, threads)
    _check_specs(v, "input", v.inputs, backend.inputs)
    _check_specs(v, "output", v.outputs, backend.outputs)
    return v, Runner(backend)


def _variant_backend(bundle: Bundle, v: Variant, threads: int | None) -> Backend:
    family = bundle.manifest.family
    model = bundle.read_runnable_model(v.name)
    # An MCU bundle runs in TFLM with the arena its manifest claims: the claim is tested here.
    arena = v.target_report.arena_bytes if family == "mcu" and v.target_report else None
    return load_backend(model, v.model.format, threads=threads,
                        edgetpu=family == "edgetpu" and edgetpu_available(),
                        prefer_micro=family == "mcu", arena_size=arena)


def _check_specs(v: Variant, kind: str, declared: tuple[TensorSpec, ...],
                 actual: tuple[TensorSpec, ...]) -> None:
    if len(declared) != len(actual):
        raise BundleError(f"variant {v.name!r}: manifest lists {len(declared)} {kind}s, "
                          f"the model has {len(actual)}")
    for d, a in zip(declared, actual):
        same_shape = len(d.shape) == len(a.shape) and all(
            x == y or x < 0 or y < 0 for x, y in zip(d.shape, a.shape))
        same_quant = (d.scale is None) == (a.scale is None) and (
            d.scale is None or (np.isclose(d.scale, a.scale, rtol=1e-6) and d.zero_point == a.zero_point))
        if d.dtype != a.dtype or not same_shape or not same_quant:
            raise BundleError(
                f"variant {v.name!r}: {kind} {d.name!r} is {d.dtype}{list(d.shape)} "
                f"scale={d.scale} zp={d.zero_point} in the manifest but {a.dtype}{list(a.shape)} "
                f"scale={a.scale} zp={a.zero_point} in the model")

"""Pack the built-in digits model for one target of each family, with a cache.

A packed bundle is kept under ``$EDGEKIT_CACHE_DIR/demo/packs`` keyed by everything that makes
it (edgekit's version, the example's files, the target profile, the bundle version, the signing
key), with the candidates table printed when it was made: a second demo run shows the same
table at once instead of searching again. The demo's fleet key lives in the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.bundle.signing import generate_keypair
from edgekit_agent.errors import EdgekitError

from .. import __version__
from ..examples import EXAMPLES
from ..packer.formats import cache_dir

# One target per family, in the order the demo shows them (see `edgekit targets`).
FAMILY_TARGETS = (("cpu", "rpi4"), ("edgetpu", "coral-usb"), ("ethos-u", "ethos-u55-128"),
                  ("mcu", "stm32h7"))
DEVICE_TARGET = "rpi4"  # the simulated devices are Pi-class boards running LiteRT


@dataclass(frozen=True)
class Packed:
    family: str
    target: str
    bundle: Path
    version: str
    recipe: str
    report: str  # the candidates table and the chosen recipe, as `edgekit pack` prints them
    cached: bool


def demo_dir() -> Path:
    return cache_dir() / "demo"


def fleet_key() -> tuple[Path, Path]:
    """(private, public) key of the demo fleet, made once and kept in the cache."""
    prefix = demo_dir() / "fleet"
    key, pub = prefix.with_suffix(".key"), prefix.with_suffix(".pub")
    if not (key.is_file() and pub.is_file()):
        prefix.parent.mkdir(parents=True, exist_ok=True)
        key, pub = generate_keypair(prefix)
    return key, pub


def pack_target(target: str, family: str, key: Path, version: str = "1",
                show_progress: bool = True) -> Packed:
    from ..packer import PackOptions, pack
    from ..targets import get_profile

    profile = get_profile(target, [])
    digest = _cache_key(profile.to_dict(), version, key)
    folder = demo_dir() / "packs"
    bundle, meta = folder / f"{target}-v{version}-{digest}.ekb", folder / f"{digest}.json"
    if bundle.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            open_bundle(bundle)  # hashes still match: a damaged entry is packed again below
            return Packed(family, target, bundle, version, info["recipe"], info["report"], True)
        except (OSError, ValueError, KeyError, EdgekitError):
            pass
    folder.mkdir(parents=True, exist_ok=True)
    staged = bundle.with_name(f".{bundle.name}.{os.getpid()}.tmp")
    result = pack(PackOptions(model="example:digits", target=target, out=staged, version=version,
                              name="digits", sign_key=key, show_progress=show_progress))
    report = result.render().replace(str(staged), str(bundle))
    recipe = ", ".join(c.recipe.name for c in result.chosen)
    os.replace(staged, bundle)
    meta.write_text(json.dumps({"recipe": recipe, "report": report}), encoding="utf-8")
    return Packed(family, target, bundle, version, recipe, report, False)


def pack_families(key: Path, say: Callable[[str], None], show_progress: bool = True,
                  ) -> list[Packed]:
    """One bundle per family (the candidates table of each shown through ``say``)."""
    out = []
    for family, target in FAMILY_TARGETS:
        say(f"\n--- {family}: {target} ---")
        packed = pack_target(target, family, key, show_progress=show_progress)
        say(packed.report + ("\n(from the demo cache)" if packed.cached else ""))
        out.append(packed)
    return out


def _cache_key(profile: dict, version: str, key: Path) -> str:
    h = hashlib.sha256()
    h.update(f"edgekit {__version__}\nversion {version}\n".encode())
    h.update(json.dumps(profile, sort_keys=True, default=str).encode())
    # The packer's own code is part of what makes a bundle (the version string rarely moves).
    package = Path(__file__).resolve().parents[1]
    for path in sorted([*package.glob("packer/*.py"), *package.glob("targets/**/*.py"),
                        *package.glob("targets/data/*.toml")]):
        h.update(path.read_bytes())
    example = EXAMPLES["digits"]
    for path in (example.onnx, example.tflite, example.calib, example.eval, example.labels):
        h.update(path.read_bytes())
    h.update(key.read_bytes())
    return h.hexdigest()[:16]

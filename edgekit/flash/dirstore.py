"""Flash into a store on a mounted SD card or rootfs: the agent's own install path, run here.

The store written is exactly what ``edgekit-agent`` on the board reads (same ``BundleStore``:
verified copy in the inactive slot, self-test, atomic switch of ``state.json``), so the board
boots into the new bundle with the previous one kept for rollback, and a refused install leaves
the card as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgekit_agent.store.slots import BundleStore

from ..errors import FlashError
from .result import DeviceState


def flash_dir(bundle_path: Path, store: Path, *, key: Path | None = None,
              progress: Callable[[int, int], None] | None = None) -> DeviceState:
    """Install into ``store`` (created if missing, inside an existing folder)."""
    if store.exists() and not store.is_dir():
        raise FlashError(f"{store} is not a folder")
    if not store.parent.is_dir():
        raise FlashError(f"{store.parent} does not exist (is the card mounted?)")
    size = bundle_path.stat().st_size
    if progress:
        progress(0, size)
    installed = BundleStore(store, public_key=key).install(bundle_path)
    if progress:  # the store copies and fsyncs in one step; report it when it is durable
        progress(size, size)
    return DeviceState.from_dict(BundleStore(store).status().to_dict(), install=installed.to_dict())

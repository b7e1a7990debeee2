"""The wheel ships every package under edgekit/ (pyproject lists them: see its comment)."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


def test_every_package_is_listed():
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "edgekit").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "edgekit.firmware_targets" in listed


def test_the_dashboard_files_ship_in_the_wheel():
    from fnmatch import fnmatch

    from edgekit.fleet.coordinator.server import FILES, STATIC

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = data["edgekit.fleet.coordinator"]
    for name, _ in FILES.values():
        assert (STATIC / name).is_file(), name
        assert any(fnmatch(f"static/{name}", g) for g in globs), name
    assert (STATIC / "uPlot.LICENSE").read_text().startswith("The MIT License")

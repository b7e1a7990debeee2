"""TEMPORARY (issue 8, host half): the broker and agent fixtures still live in
tests/telemetry/conftest.py, which the agent half of the restructure moves to tests/conftest.py.
Until both halves are merged, load them from there by path; delete this file after the merge."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[2] / "telemetry" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_telemetry_fixtures", _SOURCE)
_fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _fixtures  # dataclasses look their module up
_spec.loader.exec_module(_fixtures)

broker = _fixtures.broker
collect = _fixtures.collect
power_bundle = _fixtures.power_bundle
start_agent = _fixtures.start_agent
agent_config = _fixtures.agent_config

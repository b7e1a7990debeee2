"""The README's option reference is generated from the real parsers and is up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import cli_reference  # noqa: E402


def test_every_option_has_help():
    assert cli_reference.undocumented() == []


def test_readme_lists_every_option_as_the_parsers_define_it():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "cli_reference.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (REPO / "README.md").read_text()
    for path, parser in cli_reference.commands(cli_reference.host_parser(), "edgekit"):
        for action in cli_reference.options(parser):
            assert action.option_strings[-1] in text, (path, action.option_strings)

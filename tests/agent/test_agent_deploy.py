"""The shipped systemd unit: systemd itself accepts every line, and it runs the agent daemon."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "agent" / "systemd" / "edgekit-agent.service"


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (package systemd) is needed to check the unit"
    # the interpreter's own scripts first: a venv need not be on PATH
    agent_bin = shutil.which("edgekit-agent", path=str(Path(sys.executable).parent)) or shutil.which("edgekit-agent")
    assert agent_bin
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/edgekit-agent", agent_bin))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr  # unknown keys warn here


def test_unit_restarts_on_failure_and_is_hardened():
    s = _settings(UNIT.read_text())
    assert s["ExecStart"] == ["/usr/local/bin/edgekit-agent run --config /etc/edgekit/agent.toml"]
    assert s["Restart"] == ["on-failure"] and s["User"] == ["edgekit"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                       ("CapabilityBoundingSet", ""), ("SystemCallFilter", "@system-service")):
        assert s[key] == [value], key
    assert s["ReadWritePaths"] == ["/var/lib/edgekit"]
    assert s["WorkingDirectory"] == ["/var/lib/edgekit"] and int(s["LimitNOFILE"][0]) >= 4096
    for key in ("ProtectHome", "ProtectKernelTunables", "RestrictSUIDSGID", "LockPersonality"):
        assert s[key] == ["yes"], key

"""Parsing flash URIs and the scheme registry (no device needed)."""

from __future__ import annotations

import pytest

from edgekit.errors import FlashError
from edgekit.flash import SCHEMES, parse_uri
from edgekit.flash.ssh import SshTarget, install_script, ssh_command
from edgekit.targets import FAMILY_REGISTRY


@pytest.mark.parametrize("text, fields", [
    ("ssh://pi@raspberrypi.local/var/lib/edgekit",
     {"host": "raspberrypi.local", "user": "pi", "port": None, "path": "/var/lib/edgekit"}),
    ("ssh://10.0.0.7:2222/srv/store", {"host": "10.0.0.7", "user": None, "port": 2222, "path": "/srv/store"}),
    ("ssh://root@[::1]:22/s", {"host": "::1", "user": "root", "port": 22, "path": "/s"}),
    ("ssh://pi@board/~/edgekit", {"path": "~/edgekit"}),
    ("ssh://board/a%20b", {"path": "/a b"}),
    ("dir:///media/card/store", {"path": "/media/card/store"}),
    ("dir://relative/store?x", {"path": "relative/store?x"}),
    ("serial:///dev/ttyACM0", {"path": "/dev/ttyACM0", "params": {}}),
    ("serial:///dev/ttyUSB1?baud=115200", {"path": "/dev/ttyUSB1", "params": {"baud": "115200"}}),
])
def test_parse(text, fields):
    uri = parse_uri(text)
    assert uri.scheme == text.split(":")[0] and uri.text == text
    for key, value in fields.items():
        assert getattr(uri, key) == value, key


@pytest.mark.parametrize("text, fragment", [
    ("ftp://host/x", "unknown flash target"),
    ("/dev/ttyACM0", "unknown flash target"),
    ("ssh://host", "names no store"),
    ("ssh://host/", "names no store"),
    ("ssh:///store", "names no host"),
    ("ssh://host:99999/s", "port"),
    ("ssh://host:abc/s", "port"),
    ("ssh://-oProxyCommand=x/s", "names no host"),
    ("ssh://host/s?x=1", "no query"),
    ("serial://", "names no device"),
    ("serial:///dev/tty0?baud=0", "positive integer"),
    ("serial:///dev/tty0?speed=9600", "unknown parameter 'speed'"),
    ("dir://", "names no folder"),
])
def test_parse_errors(text, fragment):
    with pytest.raises(FlashError) as err:
        parse_uri(text)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_schemes_name_real_families():
    families = {f for s in SCHEMES.values() for f in s.families}
    assert families == set(FAMILY_REGISTRY)  # every family has exactly one way onto a device
    assert sum(len(s.families) for s in SCHEMES.values() if s.name != "dir") == len(FAMILY_REGISTRY)


def test_ssh_command_quotes_everything_and_keeps_user_options_first(monkeypatch):
    monkeypatch.setenv("EDGEKIT_SSH", "ssh -F none")
    target = SshTarget(host="board", store="/srv/$(reboot)/it's", user="pi", port=2200,
                       options=("ConnectTimeout=3",), agent_cmd="'/opt/edge kit/bin/python' -m edgekit_agent.cli")
    script = install_script(target, 1234, "KEY'; rm -rf /")
    argv = ssh_command(target, script)
    assert argv[:3] == ["ssh", "-F", "none"]
    assert argv.index("ConnectTimeout=3") < argv.index("BatchMode=yes")  # ssh keeps the first value
    assert argv[-3:-1] == ["--", "board"] and ["-p", "2200"] == argv[argv.index("-p"):argv.index("-p") + 2]
    assert "store='/srv/$(reboot)/it'\"'\"'s'" in script
    assert "'/opt/edge kit/bin/python' -m edgekit_agent.cli install \"$tmp\"" in script
    assert "command -v '/opt/edge kit/bin/python'" in script
    assert "printf %s 'KEY'\"'\"'; rm -rf /'" in script
    assert '[ "$got" -eq 1234 ]' in script

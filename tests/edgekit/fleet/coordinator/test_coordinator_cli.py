"""`edgekit coordinator run` refuses bad input with one `error:` line and exit 1."""

from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.host


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_arguments(edgekit_cli, cli_error, broker, tmp_path):
    run = ("coordinator", "run", "--broker", broker.url)
    cli_error(edgekit_cli(*run, "--fleet", "a/b"), "--fleet", "a/b")
    cli_error(edgekit_cli(*run, "--fleet", "lab", "--http", "nowhere"), "--http", "nowhere")
    cli_error(edgekit_cli(*run, "--fleet", "lab", "--name", "x+y", "--http", "127.0.0.1:0"),
              "--name")
    cli_error(edgekit_cli(*run, "--fleet", "lab", "--energy-weight", "-3"), "--energy-weight")
    blocker = tmp_path / "file"
    blocker.write_text("")
    cli_error(edgekit_cli(*run, "--fleet", "lab", "--http", "127.0.0.1:0", "--state",
                          str(blocker / "state")), "--state")
    cli_error(edgekit_cli("coordinator", "run", "--broker", f"127.0.0.1:{_closed_port()}",
                          "--fleet", "lab", "--http", "127.0.0.1:0"), "cannot reach the broker")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cli_error(edgekit_cli(*run, "--fleet", "lab", "--http", f"127.0.0.1:{port}"),
                  "cannot listen")

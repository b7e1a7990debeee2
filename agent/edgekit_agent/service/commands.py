"""The actions a signed ``cmd`` can ask for: one handler per entry of ``schema.ACTIONS``.

A handler gets the daemon (anything with the :class:`CommandHost` surface) and the verified
command, and returns the result data of the ``cmd_result`` event; a refusal raises an
``EdgekitError``, which becomes a ``cmd_error`` event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from ..config import AgentConfig
from ..errors import CommandError, StoreError
from ..power.policy import Mode, ModeChange, Policy, PolicyEngine
from ..telemetry.schema import ACTIONS, Command
from .agent import Agent


class CommandHost(Protocol):
    config: AgentConfig
    agent: Agent
    policy: Policy
    engine: PolicyEngine

    def report(self) -> int | None: ...

    def _apply(self, mode: Mode, initial: bool = False) -> dict[str, Any]: ...

    def _on_mode_change(self, change: ModeChange) -> None: ...

    def _load_policy(self) -> Policy: ...

    def _bundle_info(self) -> dict[str, Any]: ...

    def _event(self, kind: str, message: str, *, level: str = "info",
               data: dict[str, Any] | None = None, correlation_id: str | None = None) -> None: ...


Handler = Callable[[CommandHost, Command], dict[str, Any]]


def set_mode(d: CommandHost, cmd: Command) -> dict[str, Any]:
    before = d.engine.mode
    change = d.engine.set_override(cmd.args["mode"], time.monotonic(), cmd.args.get("duration_s"))
    if change is not None:
        d._on_mode_change(change)
    return {"from": before, "mode": d.engine.mode, "override": d.engine.override}


def reload(d: CommandHost, cmd: Command) -> dict[str, Any]:
    before = d.agent.bundle_id
    bundle_id = d.agent.reload()
    if bundle_id != before:
        d._event("reload", f"now running bundle {bundle_id} (was {before})",
                 data={"bundle": d._bundle_info(), "previous_bundle_id": before})
    d.policy = d._load_policy()
    mode = d.engine.mode if d.engine.mode in d.policy.mode_names else None
    d.engine = PolicyEngine(d.policy, mode=mode or "")
    applied = d._apply(d.engine.current)
    return {"bundle_id": bundle_id, "mode": d.engine.mode, "applied": applied,
            "policy": d.policy.source}


def rollback(d: CommandHost, cmd: Command) -> dict[str, Any]:
    if d.agent.store is None:
        raise StoreError("this agent runs a bundle file, not a store: nothing to roll back to")
    bundle_id = d.agent.store.rollback(f"command {cmd.id}")
    d.agent.reload()
    d._apply(d.engine.current)
    return {"bundle_id": bundle_id}


def report_now(d: CommandHost, cmd: Command) -> dict[str, Any]:
    return {"seq": d.report()}


HANDLERS: dict[str, Handler] = {"set_mode": set_mode, "reload": reload, "rollback": rollback,
                                "report_now": report_now}
assert HANDLERS.keys() == ACTIONS.keys(), "every action of the wire schema has one handler"


def execute(d: CommandHost, cmd: Command) -> dict[str, Any]:
    handler = HANDLERS.get(cmd.action)
    if handler is None:  # the verifier refuses these already; a second line of defence
        raise CommandError(f"unknown action {cmd.action!r} (allowed: {', '.join(HANDLERS)})")
    return handler(d, cmd)

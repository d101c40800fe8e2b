"""Hooks: commands an operator configures to run at a migration's phase changes.

For paging or chat notifications, like gh-ost's hooks. Configure them in ``livemigrate.toml``::

    [hooks]
    backfill_complete = "notify-chat 'backfill of $LM_HOOK_MIGRATION_ID done'"
    cutover_done = "/opt/ops/page-oncall.sh"

or as JSON in ``LIVEMIGRATE_HOOKS``. Each command runs through ``/bin/sh -c`` with the
migration's facts in its environment (``LM_HOOK_EVENT``, ``LM_HOOK_MIGRATION_ID``,
``LM_HOOK_SOURCE_TABLE``, ``LM_HOOK_DESTINATION_TABLE``, ``LM_HOOK_AT`` and the event's own,
e.g. ``LM_HOOK_ACTIVE_TABLE``, ``LM_HOOK_EPOCH``, ``LM_HOOK_WRITE_PAUSE_SECONDS``). A hook that
fails or outlives its timeout is logged; it never changes what the command did or its exit code.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, get_args

from livemigrate.config import Settings

log = logging.getLogger("livemigrate.hooks")

Event = Literal[
    "backfill_complete", "gates_pass", "cutover_done", "cutover_aborted", "rollback_done"
]
EVENTS: tuple[str, ...] = get_args(Event)


@dataclass(frozen=True)
class Hooks:
    """The configured hook commands of one migration, and the facts every hook gets."""

    commands: Mapping[str, str] = field(default_factory=dict)
    facts: Mapping[str, object] = field(default_factory=dict)
    timeout: float = 60.0

    @classmethod
    def of(cls, settings: Settings) -> Hooks:
        return cls(
            dict(settings.hooks),
            {
                "migration_id": settings.migration_id,
                "source_table": settings.source_table,
                "destination_table": settings.destination_table,
                "control_table": settings.control_table,
            },
            settings.hook_timeout_seconds,
        )

    def fire(self, event: Event, **facts: object) -> int | None:
        """Run the hook of ``event`` if one is configured; its exit status (None: none ran)."""
        command = self.commands.get(event)
        if not command:
            return None
        env = dict(os.environ)
        at = datetime.now(tz=UTC).isoformat(timespec="milliseconds")
        for name, value in {**self.facts, **facts, "event": event, "at": at}.items():
            env[f"LM_HOOK_{name.upper()}"] = "" if value is None else str(value)
        try:
            done = subprocess.run(command, shell=True, env=env, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            log.error("hook %s timed out after %gs: %s", event, self.timeout, command)
            return None
        if done.returncode != 0:
            log.error("hook %s exited %d: %s", event, done.returncode, command)
        else:
            log.info("hook %s ran: %s", event, command)
        return done.returncode

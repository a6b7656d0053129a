"""A director's settings: `qlab director start`'s options, made from the declarations here."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from quantlab.daemon_settings import LOG_KEEP, LOG_MAX_MB, METRICS_PORT
from quantlab.errors import ConfigError
from quantlab.logsetup import KEEP, MAX_MB, LogSettings
from quantlab.numbers import MIN_SECONDS, Setting
from quantlab.store.strategy_settings import first_problem


class DirectorOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What `qlab director start` hands the director process (quantlab.daemon)."""

    heartbeat: Annotated[float, Setting(
        help="Seconds between director heartbeats (it also wakes on a change in the store)", unit="s",
        at_least=MIN_SECONDS, metavar="S", alias="--tick")] = 1.0
    lease_ttl: Annotated[float, Setting(
        help="Seconds the leadership lease lasts without renewal; a standby takes over after it plus a margin",
        unit="s", at_least=MIN_SECONDS, metavar="S")] = 10.0
    log_format: Literal["text", "json"] = "text"  #: the log: text, or one JSON object a line
    log_max_mb: Annotated[float, LOG_MAX_MB] = MAX_MB
    log_keep: Annotated[int, LOG_KEEP] = KEEP
    metrics_port: Annotated[int | None, METRICS_PORT] = None

    @property
    def log_settings(self) -> LogSettings:
        return LogSettings(format=self.log_format, max_mb=self.log_max_mb, keep=self.log_keep)

    def checked(self) -> DirectorOptions:
        """These options, once every one is within its range and the lease outlasts a heartbeat."""
        if (problem := first_problem(self)) is not None:
            raise ConfigError(problem)
        if self.lease_ttl <= self.heartbeat:
            # The lease is renewed on a heartbeat: one that outlasts it hands the leadership to a standby.
            raise ConfigError(f"--lease-ttl ({self.lease_ttl:g}s) must be longer than the director's --heartbeat "
                              f"({self.heartbeat:g}s)")
        return self

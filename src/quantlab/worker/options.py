"""A worker's settings: command-line options over a profile (workers/NAME.toml).

The numeric ones are Settings (quantlab.store.strategy_settings): their options,
their keys in quantlab.toml and in a profile, and their checks are made from
the declarations here.
"""

from __future__ import annotations

import tomllib
from typing import Annotated, Literal
from pathlib import Path

import msgspec

from quantlab import numbers
from quantlab.daemon_settings import LOG_KEEP, LOG_MAX_MB, METRICS_PORT
from quantlab.errors import ConfigError
from quantlab.logsetup import KEEP, MAX_MB, LogSettings
from quantlab.exchange.accounts import PROXY_ENV, has_credentials
from quantlab.store.leases import fence_margin
from quantlab.numbers import Setting
from quantlab.store.strategy_settings import current_keys, field_settings, first_problem
from quantlab.worker import strategyuids


class WorkerOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str = ""  #: defaults to "<host>-<region>"
    name: str = ""  #: display name; defaults to the id
    region: str = "JP"
    max_strategies: Annotated[int, Setting(help="Most strategies this worker runs at once", unit="strategies",
                                           at_least=1, metavar="N")] = 20
    heartbeat: Annotated[float, Setting(help="Seconds between worker heartbeats", unit="s", at_least=numbers.MIN_SECONDS,
                                        metavar="S")] = 1.0
    lease_ttl: Annotated[float, Setting(help="Seconds the worker's lease lasts without renewal", unit="s",
                                        at_least=numbers.MIN_SECONDS, metavar="S")] = 15.0
    #: Its drain budget, not a strategy's own stop_timeout (which bounds one st_exit wherever it runs).
    drain_timeout: Annotated[float, Setting(
        help="Seconds its strategies get for st_exit when the worker stops", unit="s", at_least=numbers.MIN_SECONDS,
        metavar="S", alias="--stop-timeout")] = 10.0
    accounts_file: str | None = None  #: env.jsonl; default: etc/env.jsonl under the home, then the repo
    proxy: str | None = None  #: HTTP(S) proxy for the exchange, for the region
    hooks: str | None = None  #: a Python file with optional user hooks st_worker_init/heartbeat/exit
    log_format: Literal["text", "json"] = "text"  #: the worker's own log: text, or one JSON object a line
    log_max_mb: Annotated[float, LOG_MAX_MB] = MAX_MB
    log_keep: Annotated[int, LOG_KEEP] = KEEP
    metrics_port: Annotated[int | None, METRICS_PORT] = None  #: 127.0.0.1 and beyond: all interfaces
    #: "FIRST-LAST": each strategy child runs as a uid of its own from this range
    #: (quantlab/worker/strategyuids.py); None: as the worker's user.
    strategy_uids: str | None = None

    @property
    def log_settings(self) -> LogSettings:
        return LogSettings(format=self.log_format, max_mb=self.log_max_mb, keep=self.log_keep)

    @property
    def uid_range(self) -> strategyuids.UidRange | None:
        return strategyuids.parse(self.strategy_uids) if self.strategy_uids is not None else None

    def resolved(self, host: str) -> "WorkerOptions":
        """Fill derived defaults (the id from ``host``, this process's host name) and check ranges."""
        worker_id = self.id or f"{host}-{self.region}"
        if (problem := first_problem(self)) is not None:
            raise ConfigError(problem)
        if self.lease_ttl <= self.heartbeat:
            raise ConfigError(f"--lease-ttl ({self.lease_ttl:g}s) must be longer than the worker's --heartbeat "
                              f"({self.heartbeat:g}s)")
        if self.proxy and has_credentials(self.proxy):
            raise ConfigError(
                "worker proxy must not carry credentials: the command line is readable by every user; "
                f"put the proxy with its credentials in {PROXY_ENV} or in the accounts file's \"proxy\""
            )
        if (uids := self.uid_range) is not None and len(uids) < self.max_strategies:
            raise ConfigError(f"--strategy-uids {uids} holds {len(uids)} uids: fewer than --max-strategies "
                              f"({self.max_strategies}), and no two strategies share one")
        usable = self.lease_ttl - fence_margin(self.lease_ttl)
        if self.drain_timeout >= usable:
            # A worker that loses its lease stops its strategies within what is left of it.
            raise ConfigError(
                f"--drain-timeout ({self.drain_timeout:g}s) must fit inside the worker's lease: under --lease-ttl "
                f"({self.lease_ttl:g}s) minus the fence margin ({fence_margin(self.lease_ttl):g}s)"
            )
        return msgspec.structs.replace(self, id=worker_id, name=self.name or worker_id)


def profile_keys(path: Path) -> set[str]:
    """The settings a profile names (it wins over the settings file, not over the command line)."""
    try:
        return set(current_keys(tomllib.loads(path.read_text(encoding="utf-8")), field_settings(WorkerOptions), ""))
    except (OSError, tomllib.TOMLDecodeError, ConfigError):
        return set()  # load_profile reports what is wrong with it


def load_profile(path: Path) -> WorkerOptions:
    """Options from a worker profile TOML; unknown keys are an error, not a silent typo.

    A number outside its range is reported with the file and the line (TOML reads
    ``nan`` and ``inf`` as numbers), before anything starts.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = current_keys(tomllib.loads(text), field_settings(WorkerOptions), str(path))
        options = msgspec.convert(data, WorkerOptions)
    except FileNotFoundError:
        raise ConfigError(f"worker profile not found: {path}") from None
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
        raise ConfigError(f"worker profile {path}: {e}") from None
    if (found := next(numbers.problems(options, only=data), None)) is not None:
        key, problem = found
        line = numbers.toml_line(text, "", key) or numbers.toml_line(text, "", _former_key(key))
        raise ConfigError(f"{numbers.located(path, line)}: {key} {problem}")
    return options


def _former_key(name: str) -> str:
    return next((s.alias_key for s in field_settings(WorkerOptions) if s.name == name and s.alias_key), name)

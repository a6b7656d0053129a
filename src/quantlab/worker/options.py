"""A worker's settings: command-line options over a profile (workers/NAME.toml)."""

from __future__ import annotations

import tomllib
from typing import Literal
from pathlib import Path

import msgspec

from quantlab.errors import ConfigError
from quantlab.logsetup import LogSettings
from quantlab.exchange.accounts import PROXY_ENV, has_credentials
from quantlab.store.leases import fence_margin


class WorkerOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str = ""  #: defaults to "<host>-<region>"
    name: str = ""  #: display name; defaults to the id
    region: str = "JP"
    max_strategies: int = 20
    heartbeat: float = 1.0  #: seconds between worker heartbeats
    lease_ttl: float = 15.0  #: seconds the worker's lease lasts without a renewal
    stop_timeout: float = 10.0  #: seconds strategies get for st_exit when the worker stops
    accounts_file: str | None = None  #: env.jsonl; default: etc/env.jsonl under the home, then the repo
    proxy: str | None = None  #: HTTP(S) proxy for the exchange, for the region
    hooks: str | None = None  #: a Python file with optional user hooks st_worker_init/heartbeat/exit
    log_format: Literal["text", "json"] = "text"  #: the worker's own log: text, or one JSON object a line
    log_max_mb: float = 10.0  #: the worker's and its strategies' logs rotate past this size
    log_keep: int = 5  #: rotated log files kept
    metrics_port: int | None = None  #: serve Prometheus metrics on this port (127.0.0.1 and beyond: all interfaces)

    @property
    def log_settings(self) -> LogSettings:
        return LogSettings(format=self.log_format, max_mb=self.log_max_mb, keep=self.log_keep)

    def resolved(self, host: str) -> "WorkerOptions":
        """Fill derived defaults (the id from ``host``, this process's host name) and check ranges."""
        worker_id = self.id or f"{host}-{self.region}"
        for name in ("heartbeat", "lease_ttl", "stop_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"worker {name.replace('_', '-')} must be positive")
        if self.max_strategies < 1:
            raise ConfigError("worker max-strategies must be at least 1")
        if self.lease_ttl <= self.heartbeat:
            raise ConfigError("worker lease-ttl must be longer than its heartbeat")
        if self.proxy and has_credentials(self.proxy):
            raise ConfigError(
                "worker proxy must not carry credentials: the command line is readable by every user; "
                f"put the proxy with its credentials in {PROXY_ENV} or in the accounts file's \"proxy\""
            )
        usable = self.lease_ttl - fence_margin(self.lease_ttl)
        if self.stop_timeout >= usable:
            # A worker that loses its lease stops its strategies within what is left of it.
            raise ConfigError(
                f"worker stop-timeout ({self.stop_timeout:g}s) must fit inside its lease: under lease-ttl "
                f"({self.lease_ttl:g}s) minus the fence margin ({fence_margin(self.lease_ttl):g}s)"
            )
        return msgspec.structs.replace(self, id=worker_id, name=self.name or worker_id)


def profile_keys(path: Path) -> set[str]:
    """The settings a profile names (it wins over the settings file, not over the command line)."""
    try:
        return set(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError):
        return set()  # load_profile reports what is wrong with it


def load_profile(path: Path) -> WorkerOptions:
    """Options from a worker profile TOML; unknown keys are an error, not a silent typo."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return msgspec.convert(data, WorkerOptions)
    except FileNotFoundError:
        raise ConfigError(f"worker profile not found: {path}") from None
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as e:
        raise ConfigError(f"worker profile {path}: {e}") from None

"""Accounts a worker serves, read from ``env.jsonl``: one JSON object per line.

    {"name": "wjcgm@bbt-sub1", "type": "bybit", "testnet": false, "api_key": "...",
     "api_secret_env": "BBT_SUB1_SECRET", "rate_limit": 10}
    {"name": "paper", "type": "paper", "balances": {"USDT": 10000}, "symbols": ["BTCUSDT"], "seed": 7}

The secret stays in the worker: repr() of an Account hides it, it is never
written to the store, and only account names go into the worker's Resource.
Every number is checked against the Range its field declares (quantlab.numbers)
as the file is read: a bad one is an error naming the file, its line and the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from typing import Annotated, Literal

import msgspec

from quantlab.errors import ConfigError
from quantlab.numbers import MIN_SECONDS, Range, problems
from quantlab.exchange.risk import RiskLimits
from quantlab.store.store import check_id

DEFAULT_PAPER = "paper"


class Account(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    type: Literal["bybit", "paper"]
    testnet: bool = False
    demo: bool = False
    api_key: str = ""
    api_secret: str = ""
    api_secret_env: str = ""  #: name of an environment variable holding the secret
    rate_limit: Annotated[float, Range(more_than=0)] = 10.0  #: calls per second, shared by every strategy on this worker
    domain: str = "bybit"  #: pybit's domain, e.g. "bytick" for some regions
    tld: str = "com"  #: pybit's tld, e.g. "com", "nl", "com.hk"
    endpoint: str | None = None  #: full base URL overriding pybit's (a gateway, a test server)
    proxy: str | None = None  #: HTTP(S) proxy for this account; else the worker's
    timeout: Annotated[float, Range(at_least=MIN_SECONDS)] = 10.0  #: seconds, per HTTP call
    max_retries: Annotated[int, Range(at_least=0)] = 3  #: attempts per call (0 and 1: one)
    # risk limits for every strategy's orders together on this account (quantlab/exchange/risk.py),
    # in the ranges of StrategySpec's own
    max_order_notional: Annotated[float | None, Range(more_than=0)] = None
    max_orders_per_minute: Annotated[int | None, Range(more_than=0)] = None
    max_open_orders: Annotated[int | None, Range(at_least=0)] = None
    # paper only
    balances: Annotated[dict[str, float], Range(at_least=0)] = msgspec.field(
        default_factory=lambda: {"USDT": 10_000.0})  #: wallet balance per coin
    symbols: list[str] = msgspec.field(default_factory=lambda: ["BTCUSDT", "ETHUSDT"])
    seed: Annotated[int, Range()] = 0  #: any whole number: the paper market's random walk

    def __repr__(self) -> str:
        return f"Account(name={self.name!r}, type={self.type!r}, testnet={self.testnet})"

    __str__ = __repr__

    @property
    def limits(self) -> RiskLimits:
        return RiskLimits(max_order_notional=self.max_order_notional, max_orders_per_minute=self.max_orders_per_minute,
                          max_open_orders=self.max_open_orders)

    def secret(self) -> str:
        """The API secret: the one read at start (take_secrets), else from its environment variable."""
        if self.api_secret_env and not self.api_secret:
            value = os.environ.get(self.api_secret_env)
            if value is None:
                raise ConfigError(
                    f"account {self.name!r}: environment variable {self.api_secret_env} is not set"
                )
            return value
        return self.api_secret


#: An environment variable that may hold the worker's proxy URL with its credentials, read once
#: and removed: a URL given with --proxy is visible to every user in /proc/PID/cmdline.
PROXY_ENV = "QLAB_PROXY"
#: Proxy variables that requests and most tools read; children get them without credentials.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def take_secrets(accounts: list[Account]) -> None:
    """Read every secret named by an environment variable into its account, then drop the variable.

    What is left in the environment would reach every process this one starts.
    """
    for account in accounts:
        if account.api_secret_env and not account.api_secret:
            account.api_secret = account.secret()
    for name in {a.api_secret_env for a in accounts if a.api_secret_env}:
        os.environ.pop(name, None)


def take_proxy(option: str | None) -> str | None:
    """The worker's proxy: --proxy (credentials refused there), else QLAB_PROXY (then removed)."""
    from_env = os.environ.pop(PROXY_ENV, None)
    return option or from_env or None


def has_credentials(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.username or parts.password)


def without_credentials(url: str) -> str:
    """``url`` with any user:password@ removed."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def default_paper_account() -> Account:
    """The paper account every worker serves when no accounts file names one."""
    return Account(name=DEFAULT_PAPER, type="paper")


_decode = msgspec.json.Decoder(Account).decode


def parse_accounts(text: str, source: str) -> list[Account]:
    """Accounts from env.jsonl text; a bad line raises ConfigError naming its number."""
    accounts: dict[str, Account] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{source}:{number}"
        try:
            account = _decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ConfigError(f"{where}: {e}") from None
        try:
            check_id("account", account.name)
        except Exception as e:
            raise ConfigError(f"{where}: {e}") from None
        if account.name in accounts:
            raise ConfigError(f"{where}: account {account.name!r} is named twice")
        if account.type == "bybit" and not account.api_key:
            raise ConfigError(f"{where}: bybit account {account.name!r} has no api_key")
        if account.type == "bybit" and not (account.api_secret or account.api_secret_env):
            raise ConfigError(f"{where}: bybit account {account.name!r} needs api_secret or api_secret_env")
        if (found := next(problems(account), None)) is not None:
            raise ConfigError(f"{where}: {found[0]} {found[1]}")
        accounts[account.name] = account
    return list(accounts.values())


def load_accounts(path: Path | None) -> list[Account]:
    """The accounts in ``path``; with no file, the default paper account alone."""
    if path is None or not path.exists():
        return [default_paper_account()]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read accounts file {path}: {e}") from e
    accounts = parse_accounts(text, str(path))
    for account in accounts:
        account.secret()  # fail at start, not at the first call, when an env var is missing
    return accounts

"""One error hierarchy: a user sees the message, never a traceback."""

from __future__ import annotations


class QuantlabError(Exception):
    """Root of every error quantlab raises on purpose."""


class ConfigError(QuantlabError):
    """A setting, profile or accounts file is wrong."""


class BadInput(QuantlabError):
    """A command-line argument or parameter is wrong."""


class StrategyFileError(BadInput):
    """A strategy file is missing, does not parse, or lacks a hook."""


class JsRuntimeError(ConfigError):
    """Node, or the JavaScript strategy runtime (`qlab js install`), is missing."""


class NotFound(QuantlabError):
    """A record with that id does not exist."""


class Conflict(QuantlabError):
    """A record with that id already exists, or a write lost a race."""


class StaleWriter(Conflict):
    """A write came from a worker that no longer holds the assignment (fencing)."""


class CorruptRecord(QuantlabError):
    """A stored record does not decode; it is kept for the operator, never replaced by a default."""

    def __init__(self, message: str, *, version: int = 0) -> None:
        super().__init__(message)
        #: The version that does not decode (0: unknown): a write meant to replace it names it.
        self.version = version


class ApiError(QuantlabError):
    """An exchange call failed; ``ret_code`` is Bybit's retCode (0 if none)."""

    def __init__(self, message: str, ret_code: int = 0) -> None:
        super().__init__(message)
        self.ret_code = ret_code
        self.message = message


class ApiNetworkError(ApiError):
    """An exchange call failed on the network: timeout, refused or dropped connection."""


class ApiPermissionError(ApiError):
    """The strategy asked for an account or method it may not use."""


class ApiHaltedError(ApiPermissionError):
    """A call that could open or increase exposure was refused: a halt (`qlab halt`) covers it."""


class ApiRiskError(ApiError):
    """An order was refused by a risk limit (retCode 170998): notional, orders per minute or open orders."""


class OverBudget(QuantlabError):
    """A strategy's message to its worker (ctx.send) is over its size or rate budget: it was not sent."""


class StoreUnavailable(QuantlabError):
    """The store (a database server) cannot be reached, or a write's outcome is unknown."""

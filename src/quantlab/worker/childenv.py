"""What of the worker's environment a strategy child inherits: an allowlist, so nothing secret can pass.

The zygote is started with it, and every child inherits the zygote's.
"""

from __future__ import annotations

import fnmatch
import os

from quantlab.exchange.accounts import PROXY_VARIABLES, Account, without_credentials

#: The worker's environment variables a strategy child inherits (shell patterns), and no other:
#: never the store's URL, an account's secret or whatever else the operator's environment holds.
#: A strategy's own settings come in its params. The proxy variables come without credentials.
STRATEGY_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_*", "TZ", "PYTHON*", "NODE_*", *PROXY_VARIABLES)


def strategy_environment(accounts: list[Account]) -> dict[str, str]:
    """What strategy children inherit: the allowlisted variables, less any that holds an account's secret."""
    secrets = {a.secret() for a in accounts if a.type == "bybit"} - {""}
    env = {name: value for name, value in os.environ.items()
           if any(fnmatch.fnmatchcase(name, allowed) for allowed in STRATEGY_ENVIRONMENT) and value not in secrets}
    for name in PROXY_VARIABLES:
        if name in env:
            env[name] = without_credentials(env[name])
    return env

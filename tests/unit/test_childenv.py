"""A strategy child's environment is an allowlist of the worker's: no store URL, no secret, no stranger."""

from __future__ import annotations

import pytest

from quantlab.exchange.accounts import Account
from quantlab.worker.childenv import strategy_environment


def test_only_the_allowlisted_variables_pass_and_never_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = {"PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", "LC_TIME": "C", "TZ": "UTC", "PYTHONPATH": "/p",
            "NODE_OPTIONS": "--max-old-space-size=64"}
    dropped = {"QLAB_STORE": "postgresql://u:pw@db/q", "AWS_SECRET_ACCESS_KEY": "a", "QLAB_PROXY": "http://u:p@x:1",
               "SHELL": "/bin/sh"}
    for name, value in {**kept, **dropped, "HTTPS_PROXY": "http://user:pw@proxy:3128", "NODE_SECRET": "s3"}.items():
        monkeypatch.setenv(name, value)
    account = Account(name="live", type="bybit", api_key="k", api_secret="s3")
    env = strategy_environment([account])
    assert {k: v for k, v in env.items() if k in kept} == kept
    assert not set(dropped) & set(env) and "NODE_SECRET" not in env  # allowlisted by name, but an account's secret
    assert env["HTTPS_PROXY"] == "http://proxy:3128"

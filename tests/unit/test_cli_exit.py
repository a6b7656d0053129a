"""`qlab` as a process exits without its last garbage collections walking what the imports made."""

from __future__ import annotations

import gc

import pytest

from quantlab import cli


def test_main_exits_with_the_commands_code_and_every_object_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "run", lambda: 3)
    gc.unfreeze()
    try:
        with pytest.raises(SystemExit) as exited:
            cli.main()
        assert exited.value.code == 3
        assert gc.get_freeze_count() > 0  # the interpreter's exit will not walk them
    finally:
        gc.unfreeze()  # this test process goes on: its objects are collected as before

"""`qlab apply FILE` makes the store match a fleet manifest, with real qlab processes."""

from __future__ import annotations

import pytest

from tests.conftest import Lab, wait_for

PARAMS = '''
def st_init(ctx):
    ctx.state["params"] = ctx.params
def st_heartbeat(ctx, tick):
    pass
def st_exit(ctx, reason):
    pass
'''

FLEET = '''
[defaults]
file = "params.py"
interval = 0.05
backoff = 0

[strategies.a]
params = {{ size = {size} }}

[strategies.b]
region = "JP"
{more}
'''


def test_apply_assigns_updates_restarts_and_stops_to_match(lab: Lab) -> None:
    lab.director()
    lab.worker("w1")
    lab.strategy("params", PARAMS)
    manifest = lab.home / "fleet.toml"
    manifest.write_text(FLEET.format(size=1, more="[strategies.c]\n"))
    plan = lab.run("apply", str(manifest), "--dry-run").stdout
    assert "add     a" in plan and "3 to add" in plan and lab.store.list_works() == []
    lab.run("apply", str(manifest))
    for work_id in "abc":
        lab.wait_heartbeats(work_id, 2)
    assert lab.work("a").spec.interval == 0.05 and lab.work("b").spec.placement.region == "JP"
    assert "nothing to change" in lab.run("apply", str(manifest)).stdout
    first_pid = lab.work("a").result.pid
    manifest.write_text(FLEET.format(size=2, more=""))  # a's params change, c is gone
    out = lab.run("apply", str(manifest)).stdout
    assert "update  a  (params)" in out and "stop    c" in out
    wait_for(lambda: lab.state("a").get("params") == {"size": 2}, what="a to restart with its new params")
    assert lab.work("a").result.pid != first_pid
    lab.wait_status("c", "stopped")
    assert lab.work("b").result.restarts == 0  # unchanged: left alone
    out = lab.run("apply", str(manifest), "--prune").stdout
    assert "remove  c" in out and lab.store.find_work("c") is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("[strategies.a]\nfile = 'params.py'\nintervl = 1\n", "unknown field `intervl`"),
        ("[strategies.a]\nfile = 'params.py'\ninterval = -1\n", "strategy 'a': --interval must be at least 0.001"),
        ("[strategies.a]\nfile = 'params.py'\n[strategies.b]\nfile = 'missing.py'\n", "strategy 'b': strategy file not found"),
        ("[strategies.a]\nfile = 'params.py'\n[strategies.b]\n", "strategy 'b': no file"),
        ("[strategies.a\n", "is not TOML"),
        ("[strategies.'bad id']\nfile = 'params.py'\n", "strategy id 'bad id' is not valid"),
    ],
)
def test_a_bad_manifest_is_one_error_line_and_writes_nothing(lab: Lab, text: str, message: str) -> None:
    lab.strategy("params", PARAMS)
    manifest = lab.home / "fleet.toml"
    manifest.write_text(text)
    result = lab.run("apply", str(manifest), check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert lab.store.list_works() == [] and lab.events() == []

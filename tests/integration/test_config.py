"""quantlab.toml is read: command line, then environment, then the file, then the default."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import QLAB, Lab, wait_for

REPO = Path(__file__).resolve().parents[2]
HOOKS = "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, reason): pass\n"


def qlab(lab: Lab, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QLAB, "--home", str(lab.home), *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


def test_the_shipped_example_is_a_valid_config(lab: Lab) -> None:
    result = qlab(lab, "--config", str(REPO / "etc" / "quantlab.toml"), "config", "show")
    assert result.returncode == 0, result.stderr
    assert f"director.heartbeat = 1.0  (file {REPO / 'etc' / 'quantlab.toml'})" in result.stdout


def test_one_precedence_rule_for_strategy_settings(lab: Lab) -> None:
    (lab.home / "quantlab.toml").write_text("[strategy]\ninterval = 0.7\nmax_errors = 9\n")
    file = lab.strategy("s", HOOKS)
    assert qlab(lab, "strategy", "assign", str(file), "--id", "from-file").returncode == 0
    env = {"QLAB_STRATEGY_ASSIGN_INTERVAL": "0.3"}
    assert qlab(lab, "strategy", "assign", str(file), "--id", "from-env", env=env).returncode == 0
    assert qlab(lab, "strategy", "assign", str(file), "--id", "from-cli", "--interval", "0.2", env=env).returncode == 0
    spec = {w: lab.work(w).spec for w in ("from-file", "from-env", "from-cli")}
    assert [spec[w].interval for w in spec] == [0.7, 0.3, 0.2]
    assert all(s.max_errors == 9 for s in spec.values())
    shown = qlab(lab, "config", "show", env=env).stdout
    assert "strategy.interval = '0.3'  (environment QLAB_STRATEGY_ASSIGN_INTERVAL)" in shown
    assert f"strategy.max_errors = 9  (file {lab.home / 'quantlab.toml'})" in shown


def test_a_worker_profile_sits_between_the_environment_and_the_file(lab: Lab, tmp_path: Path) -> None:
    (lab.home / "quantlab.toml").write_text("[worker]\nlease_ttl = 20.0\nmax_strategies = 7\n")
    profile = tmp_path / "p.toml"
    profile.write_text('region = "JP"\nlease_ttl = 14.0\n')
    lab.start("worker", "start", "--profile", str(profile), "--id", "w1")
    lab.start("worker", "start", "--profile", str(profile), "--id", "w2", "--lease-ttl", "16")
    w1 = wait_for(lambda: lab.store.find_resource("w1"), what="w1")
    w2 = wait_for(lambda: lab.store.find_resource("w2"), what="w2")
    assert (w1.spec.lease_ttl, w1.spec.max_strategies) == (14.0, 7)  # the profile over the file; the file over the default
    assert w2.spec.lease_ttl == 16.0  # the command line over the profile


def test_a_typo_in_the_config_is_one_error_line(lab: Lab) -> None:
    (lab.home / "quantlab.toml").write_text("[worker]\nheartbet = 1\n")
    result = qlab(lab, "status")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: config file {lab.home / 'quantlab.toml'}: unknown setting worker.heartbet (known: ")
    assert "heartbeat, " in line


def test_config_show_starts_with_the_home_the_store_and_the_file_in_use(lab: Lab) -> None:
    lines = qlab(lab, "config", "show").stdout.splitlines()
    assert lines[:3] == [
        f"home = '{lab.home}'  (command line --home)",
        f"store = '{lab.home / 'store'} (files)'  (default)",
        "config = -  (none: no --config, no $QLAB_CONFIG, no quantlab.toml in the home)",
    ]
    (lab.home / "quantlab.toml").write_text("[director]\nheartbeat = 0.5\n")
    env = {"QLAB_STORE": "postgresql://qlab:s3cret@db.internal:5432/qlab?password=s3cret"}
    result = subprocess.run([QLAB, "config", "show", "--json"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "QLAB_HOME": str(lab.home), **env})
    assert "s3cret" not in result.stdout + result.stderr  # shown, never opened: config show reads no store
    first = json.loads(result.stdout)[:3]
    assert first == [
        {"name": "home", "value": str(lab.home), "source": "environment QLAB_HOME"},
        {"name": "store", "value": "postgresql://qlab:***@db.internal:5432/qlab?password=***",
         "source": "environment QLAB_STORE"},
        {"name": "config", "value": str(lab.home / "quantlab.toml"), "source": "the home's quantlab.toml"},
    ]


def test_config_show_shows_a_required_option_as_required(lab: Lab) -> None:
    shown = qlab(lab, "config", "show").stdout
    assert "worker.region = -  (required: give --region, or a --profile that sets it)" in shown
    assert "worker.region = 'JP'" not in shown
    (lab.home / "quantlab.toml").write_text('[worker]\nregion = "EU"\n')
    assert f"worker.region = 'EU'  (file {lab.home / 'quantlab.toml'})" in qlab(lab, "config", "show").stdout

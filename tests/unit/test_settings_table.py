"""A strategy's settings have one source, the declarations on StrategySpec's fields.

What is made from them (the options of `qlab strategy assign`, control.AssignOptions
and its checks, a manifest's keys) is compared with them here, and so is what is
written by hand beside them: the settings table and the synopsis in docs/cli.md, the
defaults the supervision rules quote (docs/supervision.md), the manifest module's list
of keys and the defaults shown in etc/quantlab.toml.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

import click
import msgspec
import pytest

from quantlab import cli, control, manifest
from quantlab.errors import BadInput
from quantlab.store.filestore import FileStore
from quantlab.store.records import StrategySpec
from quantlab.store.strategy_settings import (
    TABLE_BEGIN, TABLE_END, FieldSetting, field_settings, markdown_table, spec_settings,
)
from quantlab.worker.options import WorkerOptions

REPO = Path(__file__).resolve().parents[2]
CLI_PAGE = REPO / "docs" / "cli.md"  #: where the settings table and the synopsis are
RULES_PAGE = REPO / "docs" / "supervision.md"
SETTINGS = spec_settings()
BY_NAME = {s.name: s for s in SETTINGS}
#: StrategySpec fields that are not settings: what to run, where, and what the system itself keeps.
NOT_SETTINGS = {"file", "params", "accounts", "placement", "backoff_max", "restart_seq"}
HOOKS = "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, reason): pass\n"


def test_every_field_of_strategy_spec_is_a_setting_or_named_here_as_not_one() -> None:
    fields = set(StrategySpec.__struct_fields__)
    assert set(BY_NAME) == fields - NOT_SETTINGS
    assert NOT_SETTINGS <= fields


def test_a_settings_default_is_its_fields() -> None:
    spec = StrategySpec(file="")
    assert {s.name: s.default for s in SETTINGS} == {s.name: getattr(spec, s.name) for s in SETTINGS}
    assert all(s.declared.none for s in SETTINGS if s.optional)


def test_the_docs_table_is_the_one_the_declarations_make() -> None:
    page = CLI_PAGE.read_text(encoding="utf-8")
    _, _, rest = page.partition(TABLE_BEGIN + "\n")
    table, end, _ = rest.partition("\n" + TABLE_END)
    assert end, f"docs/cli.md lacks the settings table's markers: {TABLE_BEGIN} ... {TABLE_END}"
    assert table == markdown_table(), "docs/cli.md's settings table is stale: run python scripts/settings_table.py"


def test_the_table_has_a_row_per_setting_with_its_option_default_and_unit() -> None:
    rows = markdown_table().splitlines()[2:]
    assert len(rows) == len(SETTINGS)
    assert rows[0] == "| `interval` | `--interval` | 1 | s | at least 0.001 | Seconds between ticks |"
    assert "| `max_memory_mb` | `--max-memory` | no limit | MB | positive |" in "\n".join(rows)


def test_the_assign_command_has_an_option_per_setting_under_todays_flags() -> None:
    assign = cli.strategy.commands["assign"]
    options = {p.name: p for p in assign.params if isinstance(p, click.Option)}
    assert [options[s.name].opts[0] for s in SETTINGS] == [
        "--interval", "--heartbeat-timeout", "--max-errors", "--error-window", "--backoff", "--stop-timeout",
        "--max-memory", "--max-order-notional", "--max-orders-per-minute", "--max-open-orders",
        "--cancel-stale-orders",
    ]
    for setting in SETTINGS:
        option = options[setting.name]
        assert option.help is not None and option.help.startswith(setting.declared.help)
        if setting.kind is bool:
            assert option.is_flag
        else:
            assert option.type.name == {int: "integer", float: "float"}[setting.kind]
            assert option.help.endswith(f"[{setting.default_text}].")
    # The options that are not settings keep their own definitions, ahead of the settings.
    assert [p.name for p in assign.params][:7] == ["file", "work_id", "pairs", "params_json", "accounts", "region",
                                                   "worker"]


def test_assign_options_have_an_optional_field_per_setting_and_spec_options_name_them_all() -> None:
    given = control.AssignOptions()
    assert all(getattr(given, s.name) is None for s in SETTINGS)
    assert set(control.AssignOptions.__struct_fields__) == set(BY_NAME) | {"accounts", "region", "worker"}
    assert control.SPEC_OPTIONS == tuple(BY_NAME)


def test_a_manifest_takes_every_setting_by_its_field_name_and_checks_its_type() -> None:
    entry = msgspec.convert({s.name: s.kind(1) for s in SETTINGS}, manifest.Entry)
    assert all(getattr(entry, s.name) == 1 for s in SETTINGS)
    with pytest.raises(msgspec.ValidationError, match="max_errors"):
        msgspec.convert({"max_errors": 1.5}, manifest.Entry)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else len(text)]


def test_the_synopsis_lists_every_option() -> None:
    page = CLI_PAGE.read_text(encoding="utf-8")
    synopsis = page[page.index("qlab strategy assign FILE"):page.index("qlab strategy list")]
    assert [s.flag for s in SETTINGS if s.flag not in synopsis] == []


def test_the_defaults_the_supervision_rules_quote_are_the_settings() -> None:
    rules = _section(RULES_PAGE.read_text(encoding="utf-8"), "# Supervision rules")
    by_flag = {s.flag: s for s in (*field_settings(WorkerOptions), *SETTINGS)}  # a strategy's --stop-timeout its own
    quoted = re.findall(r"`(--[a-z-]+)`\s+\[([^\]]+)\]", rules)
    assert len(quoted) >= 5
    for flag, text in quoted:
        assert text.split()[0] == by_flag[flag].default_text, f"docs/supervision.md: `{flag}` [{text}]"


def test_the_manifest_docstring_lists_every_key() -> None:
    doc = manifest.__doc__ or ""
    listed = doc[doc.index("The keys are"):doc.index("Applying it")]
    words = set(re.findall(r"\b[a-z][a-z_]+\b", listed))
    assert set(manifest.Entry.__struct_fields__) <= words


def test_the_shipped_config_shows_the_defaults() -> None:
    shipped = tomllib.loads((REPO / "etc" / "quantlab.toml").read_text(encoding="utf-8"))["strategy"]
    assert shipped and set(shipped) <= set(BY_NAME)
    assert shipped == {name: BY_NAME[name].default for name in shipped}


# ---- the ranges ----


def _lowest(setting: FieldSetting) -> float:
    """The lowest value the setting takes (for an open bound: one a little above it)."""
    if setting.declared.at_least is not None:
        return setting.declared.at_least
    assert setting.declared.more_than is not None
    return setting.declared.more_than + (1 if setting.kind is int else 1e-9)


def _bound(setting: FieldSetting) -> float:
    value = setting.declared.more_than if setting.declared.more_than is not None else setting.declared.at_least
    assert value is not None
    return value


RANGED = [s for s in SETTINGS if s.allowed]
FLOATS = [s for s in SETTINGS if s.kind is float]


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def _assign(store: FileStore, tmp_path: Path, **options: Any) -> None:
    path = tmp_path / "s.py"
    path.write_text(HOOKS)
    control.assign(store, control.AssignRequest(file=str(path), **options), clock=lambda: 1.0)


@pytest.mark.parametrize("setting", RANGED, ids=lambda s: s.name)
def test_the_lowest_value_in_range_is_taken(store: FileStore, tmp_path: Path, setting: FieldSetting) -> None:
    value = setting.kind(_lowest(setting))
    _assign(store, tmp_path, **{setting.name: value})
    assert getattr(store.list_works()[0].spec, setting.name) == value


@pytest.mark.parametrize("setting", RANGED, ids=lambda s: s.name)
def test_a_value_below_the_range_is_one_line_naming_the_option(store: FileStore, tmp_path: Path,
                                                               setting: FieldSetting) -> None:
    bound = _bound(setting)
    below = setting.kind(bound - 1 if setting.declared.at_least is not None else bound)
    with pytest.raises(BadInput) as caught:
        _assign(store, tmp_path, **{setting.name: below})
    assert str(caught.value) == f"{setting.flag} must be {setting.allowed}, got {below:g}"
    assert store.list_works() == []


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("setting", FLOATS, ids=lambda s: s.name)
def test_nan_and_infinity_are_refused(store: FileStore, tmp_path: Path, setting: FieldSetting, value: float) -> None:
    with pytest.raises(BadInput, match=f"^{setting.flag} must be .*, got {value:g}$"):
        _assign(store, tmp_path, **{setting.name: value})
    assert store.list_works() == []


def test_the_messages_say_the_range_in_words() -> None:
    assert BY_NAME["interval"].problem(0.0) == "must be at least 0.001, got 0"
    assert BY_NAME["max_memory_mb"].problem(0.0) == "must be positive, got 0"
    assert BY_NAME["backoff"].problem(-0.5) == "must be zero or more, got -0.5"
    assert BY_NAME["max_errors"].problem(0) == "must be at least 1, got 0"
    assert BY_NAME["max_open_orders"].problem(0) is None
    assert BY_NAME["cancel_stale_orders"].problem(True) is None

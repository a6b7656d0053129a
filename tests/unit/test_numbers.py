"""Every number that reaches a record or a daemon is checked once, against the Range declared on its field.

The property that matters: a value the checks let through survives the store (a
JSON round trip gives it back), and one that would not (NaN, infinity) or that
makes no sense (a period under 1 ms, no strategies, no rotated logs) is refused
with one line naming where it came from: the option, its environment variable,
or the file, its line and the key. Each way in is driven here with arbitrary
floats: the daemons' options (in process, the exec into the daemon replaced),
quantlab.toml, a worker profile, the accounts file, and strategy parameters.
"""

from __future__ import annotations

import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st

from quantlab import cli, control, manifest, numbers, settings
from quantlab.daemon import DirectorStart, Start, WorkerStart
from quantlab.director.options import DirectorOptions
from quantlab.errors import BadInput, ConfigError
from quantlab.exchange.accounts import Account, parse_accounts
from quantlab.numbers import MIN_SECONDS, Range
from quantlab.store.filestore import FileStore
from quantlab.store.records import StrategySpec
from quantlab.store.strategy_settings import FieldSetting, field_settings
from quantlab.worker.options import WorkerOptions, load_profile, profile_keys

#: Every float, the ones that bricked the store among them.
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e-300, -1e-300, 0.0, -0.0, -1.0, 5e-324, 1e308, MIN_SECONDS, 0.000999]
)
INTS = st.integers(min_value=-(2**31), max_value=2**31) | st.sampled_from([-1, 0, 1, 65535, 65536])
#: The daemons' options (the pipe to the daemon, then their records), and with them every record
#: whose numbers people give: a strategy's spec (the store) and an account (the worker's API pool).
DAEMON_RECORDS = (DirectorOptions, WorkerOptions)
RANGED_RECORDS = (StrategySpec, DirectorOptions, WorkerOptions, Account)

HOOKS = "def st_init(ctx): pass\ndef st_heartbeat(ctx, tick): pass\ndef st_exit(ctx, reason): pass\n"


def _values(kind: type) -> st.SearchStrategy[Any]:
    return FLOATS if kind is float else INTS


def _round_trips(record: msgspec.Struct) -> bool:
    """What the store (JSON) and the pipe to a daemon (msgpack) give back is what was written."""
    kind = type(record)
    return (msgspec.json.decode(msgspec.json.encode(record), type=kind) == record
            and msgspec.msgpack.decode(msgspec.msgpack.encode(record), type=kind) == record)


def _all_fields() -> list[tuple[type, numbers.Field]]:
    """Every numeric field that declares a range (a flag is true or false, nothing else)."""
    return [(record, field) for record in RANGED_RECORDS for field in numbers.fields(record) if field.kind is not bool]


# ---- the declarations ----


#: Numeric fields that no person sets: the system writes them.
_KEPT_BY_THE_SYSTEM = {"backoff_max", "restart_seq"}


@pytest.mark.parametrize("record", RANGED_RECORDS, ids=lambda r: r.__name__)
def test_every_number_of_a_record_people_set_declares_its_range(record: type) -> None:
    """A number added to one of these records without a range would escape every check."""
    ranged = {f.name for f in numbers.fields(record)}
    unranged = [f.name for f in msgspec.structs.fields(record)
                if f.name not in ranged and f.name not in _KEPT_BY_THE_SYSTEM and _holds_a_number(f.type)]
    assert unranged == []


def _holds_a_number(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (dict, list):
        return any(_holds_a_number(a) for a in typing.get_args(annotation))
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return any(a in (int, float) for a in args)


def test_periods_and_timeouts_are_at_least_a_millisecond() -> None:
    seconds = [(r, s) for r in (StrategySpec, *DAEMON_RECORDS) for s in field_settings(r) if s.declared.unit == "s"]
    assert {s.name for _, s in seconds} >= {"interval", "heartbeat_timeout", "error_window", "stop_timeout",
                                             "heartbeat", "lease_ttl", "drain_timeout"}
    for record, setting in seconds:
        if setting.name != "backoff":  # zero: restart at once
            assert setting.declared.at_least == MIN_SECONDS, f"{record.__name__}.{setting.name}"
    timeout = next(f for f in numbers.fields(Account) if f.name == "timeout")
    assert timeout.declared.at_least == MIN_SECONDS


def test_the_daemons_share_their_log_and_metrics_settings() -> None:
    director = {s.name: s.declared for s in field_settings(DirectorOptions)}
    worker = {s.name: s.declared for s in field_settings(WorkerOptions)}
    for name in ("log_max_mb", "log_keep", "metrics_port"):
        assert director[name] is worker[name]
    assert worker["log_keep"].at_least == 1  # 0: RotatingFileHandler never rotates, the log grows without bound
    assert director["metrics_port"].allowed == "1 to 65535"


def test_the_range_in_words() -> None:
    assert Range(more_than=0).allowed == "positive"
    assert Range(at_least=0).allowed == "zero or more"
    assert Range(at_least=MIN_SECONDS).allowed == "at least 0.001"
    assert Range(at_least=1, at_most=65535).allowed == "1 to 65535"
    assert Range(more_than=0, at_most=5).allowed == "positive and at most 5"
    assert Range().allowed == ""
    with pytest.raises(TypeError, match="one lower bound"):
        Range(more_than=0, at_least=1)


def test_the_messages() -> None:
    assert Range(more_than=0).problem(math.nan) == "must be positive, got nan"
    assert Range().problem(math.inf) == "must be finite, got inf"
    assert Range(at_least=MIN_SECONDS).problem(1e-300) == "must be at least 0.001, got 1e-300"
    assert Range(at_least=1).problem(2.5, int) == "must be a whole number, got 2.5"
    assert Range(at_least=1).problem(True, int) == "must be a whole number, got true"
    assert Range().problem("fast") == "must be a number, got 'fast'"
    assert Range().problem(1, bool) == "must be true or false, got 1"
    assert Range(at_least=MIN_SECONDS).problem(MIN_SECONDS) is None
    assert Range(at_least=1).problem(3, float) is None  # a whole number is a number


REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_config_and_profile_use_the_settings_names_and_show_their_defaults() -> None:
    shipped = tomllib.loads((REPO / "etc" / "quantlab.toml").read_text(encoding="utf-8"))
    for section, record in (("director", DirectorOptions), ("worker", WorkerOptions)):
        defaults = {s.name: s.default for s in field_settings(record)}
        assert shipped[section] and set(shipped[section]) <= set(defaults), section
        assert shipped[section] == {name: defaults[name] for name in shipped[section]}, section
    profile = tomllib.loads((REPO / "workers" / "jp-1.toml").read_text(encoding="utf-8"))
    assert "drain_timeout" in profile and "stop_timeout" not in profile
    assert msgspec.convert(profile, WorkerOptions).drain_timeout == 10.0


def test_the_synopsis_lists_the_daemons_options_under_their_names() -> None:
    readme = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for command, record, end in (("director", DirectorOptions, "qlab worker start"),
                                 ("worker", WorkerOptions, "qlab worker list")):
        synopsis = readme[readme.index(f"qlab {command} start"):readme.index(end)]
        settings_ = field_settings(record)
        assert [s.flag for s in settings_ if s.flag not in synopsis] == [], command
        assert [s.declared.alias for s in settings_ if s.declared.alias and s.declared.alias in synopsis] == []


# ---- the property: what passes survives the store; what does not is refused ----


@pytest.mark.parametrize("record, field", _all_fields(), ids=[f"{r.__name__}.{f.name}" for r, f in _all_fields()])
@hsettings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_value_is_admitted_exactly_when_finite_within_range_and_then_it_round_trips(
    record: type, field: numbers.Field, data: st.DataObject
) -> None:
    value = data.draw(_values(field.kind))
    problem = field.problem(value)
    bounds = field.declared
    within = (math.isfinite(value)
              and (bounds.more_than is None or value > bounds.more_than)
              and (bounds.at_least is None or value >= bounds.at_least)
              and (bounds.at_most is None or value <= bounds.at_most))
    assert (problem is None) == within, (value, problem)
    if problem is not None:
        assert problem.startswith("must be ") and problem.endswith(f"got {numbers.shown(value)}")
        return
    example = _example(record)
    stored = {f"{field.name}": {"USDT": value} if field.keyed else value}
    assert _round_trips(msgspec.structs.replace(example, **stored))


def _example(record: type) -> Any:
    if record is StrategySpec:
        return StrategySpec(file="s.py")
    if record is Account:
        return Account(name="paper", type="paper")
    return record()


@hsettings(max_examples=200)
@given(value=FLOATS)
def test_no_value_that_would_not_round_trip_is_ever_admitted(value: float) -> None:
    """The bug itself: NaN or infinity admitted anywhere, written as null, unreadable afterwards."""
    for record, field in _all_fields():
        if field.kind is float and field.problem(value) is None:
            assert math.isfinite(value)


# ---- the daemons' options, as `qlab director start` and `qlab worker start` read them ----


class Became(BaseException):
    """daemon.become was reached: what it was handed (no Exception: `qlab` would report one as an error)."""

    def __init__(self, start: Start) -> None:
        self.start = start


def _qlab(tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, Start | None]:
    """Run `qlab` in this process up to the exec into the daemon, which is not made; its exit code and what it handed over."""
    mask = os.umask(0o022)
    os.umask(mask)
    def become(start: Start) -> None:
        raise Became(start)
    try:
        with mock.patch("quantlab.daemon.become", become), mock.patch.dict(os.environ, env or {}):
            try:
                return cli.run(["--home", str(tmp / "home"), *args]), None
            except Became as e:
                return 0, e.start
    finally:
        os.umask(mask)  # qlab makes everything private; the rest of the tests keep theirs


def _options(command: str) -> list[FieldSetting]:
    record = DirectorOptions if command == "director" else WorkerOptions
    return list(field_settings(record))


def _start_args(command: str) -> list[str]:
    return ["director", "start"] if command == "director" else ["worker", "start", "--region", "JP", "--id", "w1"]


DAEMON_OPTIONS = [(c, s) for c in ("director", "worker") for s in _options(c)]


@pytest.mark.parametrize("command, setting", DAEMON_OPTIONS, ids=[f"{c}{s.flag}" for c, s in DAEMON_OPTIONS])
@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_daemon_option_is_refused_in_one_line_or_handed_over_within_range(
    tmp_path_factory: pytest.TempPathFactory, capfd: pytest.CaptureFixture[str], command: str,
    setting: FieldSetting, data: st.DataObject,
) -> None:
    tmp = tmp_path_factory.mktemp("q")
    value = data.draw(_values(setting.kind))
    capfd.readouterr()
    code, start = _qlab(tmp, *_start_args(command), setting.flag, repr(value))
    err = capfd.readouterr().err
    if setting.problem(value) is not None:
        assert (code, start) == (1, None)
        assert err == f"Error: {setting.flag} {setting.problem(value)}\n"
        assert not (tmp / "home" / "store").exists()  # nothing written
        return
    if start is None:  # within its range, yet not with the others (a lease no longer than the heartbeat)
        assert code == 1 and err.startswith("Error: ") and err.count("\n") == 1, err
        return
    options = start.options
    assert getattr(options, setting.name) == value
    assert _round_trips(start) and msgspec.msgpack.decode(msgspec.msgpack.encode(start), type=Start) == start


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e-300", "0", "-1"])
def test_the_lease_bug_no_director_starts_with_a_lease_the_store_cannot_read_back(tmp_path: Path, value: str,
                                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    code, start = _qlab(tmp_path, "director", "start", "--lease-ttl", value)
    assert (code, start) == (1, None)
    assert capfd.readouterr().err == f"Error: --lease-ttl must be at least 0.001, got {value}\n"


def test_a_value_from_the_environment_is_named_with_its_variable(tmp_path: Path,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    code, _ = _qlab(tmp_path, *_start_args("worker"), env={"QLAB_WORKER_START_HEARTBEAT": "nan"})
    assert code == 1
    assert capfd.readouterr().err == (
        "Error: --heartbeat (from QLAB_WORKER_START_HEARTBEAT) must be at least 0.001, got nan\n")


def test_the_heartbeat_must_be_shorter_than_the_lease(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert _qlab(tmp_path, "director", "start", "--heartbeat", "10")[0] == 1
    assert capfd.readouterr().err == "Error: --lease-ttl (10s) must be longer than the director's --heartbeat (10s)\n"


# ---- former names ----


def test_tick_is_the_directors_heartbeat_hidden_and_deprecated(tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    code, start = _qlab(tmp_path, "director", "start", "--tick", "0.25")
    assert isinstance(start, DirectorStart) and start.options.heartbeat == 0.25
    assert capfd.readouterr().err == "warning: --tick is deprecated: use --heartbeat\n"
    code, start = _qlab(tmp_path, "director", "start", "--tick", "0.25", "--heartbeat", "0.5")
    assert isinstance(start, DirectorStart) and start.options.heartbeat == 0.5  # a tie: the setting's own name
    code, start = _qlab(tmp_path, "director", "start", "--tick", "0.25", env={"QLAB_DIRECTOR_START_HEARTBEAT": "0.5"})
    assert isinstance(start, DirectorStart) and start.options.heartbeat == 0.25  # the command line is nearer
    help_text = cli.director.commands["start"].get_help(cli.click.Context(cli.director.commands["start"]))
    assert "--heartbeat" in help_text and "--tick" not in help_text


def test_stop_timeout_is_the_workers_drain_timeout(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, start = _qlab(tmp_path, *_start_args("worker"), "--stop-timeout", "3")
    assert isinstance(start, WorkerStart) and start.options.drain_timeout == 3.0
    assert "--stop-timeout is deprecated: use --drain-timeout" in capfd.readouterr().err
    code, start = _qlab(tmp_path, *_start_args("worker"), env={"QLAB_WORKER_START_STOP_TIMEOUT": "4"})
    assert isinstance(start, WorkerStart) and start.options.drain_timeout == 4.0


# ---- quantlab.toml ----


def _load(tmp: Path, text: str) -> dict[str, dict[str, Any]]:
    path = tmp / "quantlab.toml"
    path.write_text(text)
    return settings.load(path, cli.qlab)


TOML_NUMBERS = ["nan", "inf", "-inf", "1e-300", "0.0", "-1.0"]
TOML_WHOLE = ["0", "-1", "65536", "2.5", "true"]
CONFIG_KEYS = ([("director", s) for s in _options("director")] + [("worker", s) for s in _options("worker")]
               + [("strategy", s) for s in field_settings(StrategySpec) if s.kind is not bool])


@pytest.mark.parametrize("section, setting", CONFIG_KEYS, ids=[f"{c}.{s.name}" for c, s in CONFIG_KEYS])
def test_a_bad_number_in_the_config_file_names_the_file_its_line_and_the_key(
    tmp_path: Path, section: str, setting: FieldSetting
) -> None:
    for literal in TOML_NUMBERS if setting.kind is float else TOML_WHOLE:
        text = f"# settings\n[{section}]\n{setting.name} = {literal}\n"
        problem = setting.problem(tomllib.loads(text)[section][setting.name])
        if problem is None:
            assert _load(tmp_path, text)[section] == tomllib.loads(text)[section]
            continue
        with pytest.raises(ConfigError) as caught:
            _load(tmp_path, text)
        assert str(caught.value) == f"{tmp_path / 'quantlab.toml'}:3: {section}.{setting.name} {problem}"


def test_ups_interval_in_the_config_file_is_the_strategy_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"quantlab.toml:2: up.interval must be at least 0.001, got 1e-300$"):
        _load(tmp_path, "[up]\ninterval = 1e-300\n")


def test_the_former_keys_are_read_under_the_new_names(tmp_path: Path) -> None:
    tables = _load(tmp_path, "[director]\ntick = 0.5\n[worker]\nstop_timeout = 3.0\n")
    assert tables == {"director": {"heartbeat": 0.5}, "worker": {"drain_timeout": 3.0}}
    with pytest.raises(ConfigError, match=r"tick and heartbeat are one setting .*: keep heartbeat"):
        _load(tmp_path, "[director]\ntick = 0.5\nheartbeat = 0.7\n")
    with pytest.raises(ConfigError, match=r":2: director.tick must be at least 0.001, got nan$"):
        _load(tmp_path, "[director]\ntick = nan\n")


def test_config_show_names_the_settings_by_their_new_names(tmp_path: Path) -> None:
    path = tmp_path / "quantlab.toml"
    path.write_text("[director]\ntick = 0.5\n")
    shown = {s.name: s for s in settings.effective(settings.load(path, cli.qlab), path, cli.qlab)}
    assert (shown["director.heartbeat"].value, shown["director.heartbeat"].source) == (0.5, f"file {path}")
    assert "director.tick" not in shown and "worker.stop_timeout" not in shown
    assert shown["worker.drain_timeout"].value == 10.0
    with mock.patch.dict(os.environ, {"QLAB_DIRECTOR_START_TICK": "0.3"}):
        shown = {s.name: s for s in settings.effective({}, None, cli.qlab)}
    assert shown["director.heartbeat"].source == "environment QLAB_DIRECTOR_START_TICK"


# ---- a worker profile ----


@pytest.mark.parametrize("value", TOML_NUMBERS)
@pytest.mark.parametrize("setting", _options("worker"), ids=lambda s: s.name)
def test_a_bad_number_in_a_profile_names_the_file_its_line_and_the_key(tmp_path: Path, setting: FieldSetting,
                                                                       value: str) -> None:
    profile = tmp_path / "p.toml"
    literal = value if setting.kind is float else str(int(float(value))) if math.isfinite(float(value)) else "0"
    profile.write_text(f'region = "JP"\n{setting.name} = {literal}\n')
    problem = setting.problem(tomllib.loads(profile.read_text())[setting.name])
    if problem is None:
        load_profile(profile)
        return
    with pytest.raises(ConfigError) as caught:
        load_profile(profile)
    assert str(caught.value) == f"{profile}:2: {setting.name} {problem}"


def test_a_profile_may_use_the_former_key(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('region = "JP"\nstop_timeout = 4.0\n')
    assert load_profile(profile).drain_timeout == 4.0
    assert profile_keys(profile) == {"region", "drain_timeout"}
    profile.write_text('region = "JP"\nstop_timeout = inf\n')
    with pytest.raises(ConfigError, match=r"p.toml:2: drain_timeout must be at least 0.001, got inf$"):
        load_profile(profile)


# ---- the accounts file ----

ACCOUNT_NUMBERS = [f for f in numbers.fields(Account)]


@pytest.mark.parametrize("field", ACCOUNT_NUMBERS, ids=lambda f: f.name)
@hsettings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_bad_number_in_the_accounts_file_names_the_file_its_line_and_the_key(field: numbers.Field,
                                                                               data: st.DataObject) -> None:
    # JSON has no NaN or infinity (msgspec refuses 1e999: test_the_accounts_file_example)
    value = data.draw(_values(field.kind).filter(lambda v: math.isfinite(v)))
    literal = msgspec.json.encode({"USDT": value} if field.keyed else value).decode()
    line = f'{{"name": "paper", "type": "paper", "{field.name}": {literal}}}'
    problem = field.problem(value)
    if problem is None:
        (account,) = parse_accounts("# paper\n" + line, "/x/env.jsonl")
        assert _round_trips(account)
        return
    with pytest.raises(ConfigError) as caught:
        parse_accounts("# paper\n" + line, "/x/env.jsonl")
    path = f"{field.name}.USDT" if field.keyed else field.name
    assert str(caught.value) == f"/x/env.jsonl:2: {path} {problem}"


def test_the_accounts_file_example() -> None:
    with pytest.raises(ConfigError, match=r"^/x/env.jsonl:3: rate_limit must be positive, got 0$"):
        parse_accounts('{"name": "a", "type": "paper"}\n\n{"name": "b", "type": "paper", "rate_limit": 0}', "/x/env.jsonl")
    with pytest.raises(ConfigError, match=r"^/x/env.jsonl:1: timeout must be at least 0.001, got 1e-300$"):
        parse_accounts('{"name": "a", "type": "paper", "timeout": 1e-300}', "/x/env.jsonl")
    with pytest.raises(ConfigError, match=r"^/x/env.jsonl:1: Number out of range - at `\$.rate_limit`$"):
        parse_accounts('{"name": "a", "type": "paper", "rate_limit": 1e999}', "/x/env.jsonl")


# ---- strategy parameters ----


def test_non_finite_finds_the_path() -> None:
    assert numbers.non_finite({"a": 1, "b": [1.0, {"c": math.inf}]}) == ("b[1].c", math.inf)
    assert numbers.non_finite([0, math.nan])[0] == "[1]"
    assert numbers.non_finite({"a": 1e308, "b": "nan", "c": None}) is None


@hsettings(max_examples=100)
@given(value=FLOATS)
def test_a_parameter_is_stored_only_when_finite(value: float) -> None:
    text = repr(value) if math.isfinite(value) else ("1e999" if value > 0 else "-1e999" if value < 0 else "NaN")
    try:
        params = control.parse_params([f"x={text}"], None)
    except BadInput as e:
        assert not math.isfinite(value) and str(e) == f"--param x must be finite, got {text}"
        return
    if math.isnan(value):
        assert params["x"] == "NaN"  # no JSON: a bare word, as BTCUSDT is
    else:
        assert params["x"] == value


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_params_that_decode_to_a_non_finite_number_are_refused_wherever_they_come_from(
    tmp_path: Path, bad: float
) -> None:
    # msgspec refuses 1e999 in JSON, an older one read it as infinity; TOML (a manifest) has nan and inf.
    with mock.patch.object(control, "_json", lambda text: {"grid": [1.0, bad]}):
        with pytest.raises(BadInput, match=rf"^--params: grid\[1\] must be finite, got {bad:g}$"):
            control.parse_params([], "{}")
    file = tmp_path / "s.py"
    file.write_text(HOOKS)
    store = FileStore(tmp_path / "store")
    with pytest.raises(BadInput, match=rf"^params.levels\[0\] must be finite, got {bad:g}$"):
        control.assign(store, control.AssignRequest(file=str(file), params={"levels": [bad]}))
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f"[strategies.a]\nfile = 's.py'\nparams = {{ step = {bad!r} }}\n")  # TOML: nan, inf, -inf
    with pytest.raises(BadInput, match=rf"^strategy 'a': params.step must be finite, got {bad:g}$"):
        manifest.apply(store, fleet, prune=False, dry_run=True)
    assert store.list_works() == []


def test_a_message_with_a_non_finite_number_is_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    with pytest.raises(BadInput, match=r"^message: price must be finite, got inf$"):
        control.send(store, "any", {"price": math.inf})


# ---- toml_line ----


def test_toml_line() -> None:
    text = 'id = "x"\n\n[director]\n  heartbeat = 1\n[worker] # w\nheartbeat=2\nheartbeat_x = 3\n'
    assert numbers.toml_line(text, "", "id") == 1
    assert numbers.toml_line(text, "director", "heartbeat") == 4
    assert numbers.toml_line(text, "worker", "heartbeat") == 6
    assert numbers.toml_line(text, "worker", "lease_ttl") is None
    assert numbers.located(Path("/a.toml"), None) == "/a.toml"

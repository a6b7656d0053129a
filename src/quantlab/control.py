"""The operator's actions on strategies: what the `qlab` commands that change a Work do, without click.

Assign (every input checked: params, settings, placement, the file), then each
step of a Work's lifecycle (stop, start, restart, remove) and messages to it.
What the commands read lives beside it: quantlab.fleet (the fleet's views),
quantlab.strategylogs (where a strategy's log is); `worker stop` in
quantlab.workerstop.

Every function validates all of its input before it writes anything, so bad
input leaves the store as it was. Errors are QuantlabError subclasses whose
message is one line a person can act on; the CLI prints it as ``Error: ...``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import msgspec

from quantlab.errors import BadInput, Conflict, CorruptRecord, NotFound, StaleWriter, StrategyFileError
from quantlab.numbers import non_finite, shown
from quantlab.store.records import (
    EventKind,
    Event,
    Placement,
    StrategyResult,
    StrategySpec,
    Work,
)
from quantlab.store import workmachine as wm
from quantlab.store.store import Store, check_id, record_events
from quantlab.store.strategy_settings import spec_settings

Clock = Callable[[], float]

#: The reason a Work shows until the director places it.
WAITING = wm.WAITING


if TYPE_CHECKING:
    class _SettingOptions:
        """What mypy sees of the fields made below at run time, which it cannot see: each is Any."""

        def __init_subclass__(cls, **config: Any) -> None: ...
        def __init__(self, **values: Any) -> None: ...
        def __getattr__(self, name: str) -> Any: ...
else:
    #: One field per StrategySpec setting, under the setting's name and of its type, or None: not
    #: given. Made from the settings' declarations: a setting added to StrategySpec is an option
    #: here, and a manifest key, without an edit.
    _SettingOptions = msgspec.defstruct(
        "SettingOptions", [(s.name, s.kind | None, None) for s in spec_settings()], kw_only=True, module=__name__
    )


class AssignOptions(_SettingOptions, kw_only=True):
    """The options of `qlab strategy assign` (and of a manifest's table); None: the StrategySpec default."""

    accounts: list[str] | None = None  #: defaults to the file's ACCOUNTS literal
    region: str | None = None
    worker: str | None = None


class AssignRequest(AssignOptions, kw_only=True):
    """What `qlab strategy assign` asks for."""

    file: str
    id: str | None = None  #: defaults to the file's stem
    params: dict[str, Any] = {}


def _strategy_id(work_id: str) -> str:
    # Checked here so the message says "strategy id", not the store's file-level wording.
    return check_id("strategy", work_id)


# ---- params ----


def _json(text: str) -> Any:
    # msgspec refuses NaN and (as a ValidationError) numbers out of a float's range; an older
    # msgspec read 1e999 as infinity. Neither could the store write back: checked_spec refuses both.
    return msgspec.json.decode(text.encode())


_JSON_KINDS: dict[type, str] = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def parse_params(pairs: list[str], params_json: str | None) -> dict[str, Any]:
    """``--params JSON`` overlaid with each ``--param k=v`` (v parsed as JSON when it parses)."""
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            params = _json(params_json)
        except msgspec.ValidationError as e:
            raise BadInput(f"--params: every number must be finite: {e}") from e
        except msgspec.DecodeError as e:
            raise BadInput(f"--params is not a JSON object: {e}") from e
        if not isinstance(params, dict):
            raise BadInput(f"--params is not a JSON object: got {_JSON_KINDS.get(type(params), 'a value')}")
        _check_finite(params, "--params: ")
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--param expects k=v, got {pair!r}")
        try:
            params[key] = _json(text)
        except msgspec.ValidationError:
            # A number, but out of a float's range: meant as a number, so not taken as the string.
            raise BadInput(f"--param {key} must be finite, got {text}") from None
        except msgspec.DecodeError:
            params[key] = text  # a bare word such as BTCUSDT is meant as a string
        _check_finite({key: params[key]}, "--param ")
    return params


def _check_finite(params: dict[str, Any], where: str) -> None:
    """Every number in ``params`` finite: the store writes NaN and infinity as null, another value."""
    if (found := non_finite(params)) is not None:
        path, value = found
        raise BadInput(f"{where}{path} must be finite, got {shown(value)}")


# ---- assign ----


def _check_options(request: AssignRequest) -> None:
    for setting in spec_settings():
        value = getattr(request, setting.name)
        if value is not None and (problem := setting.problem(value)) is not None:
            raise BadInput(f"{setting.flag} {problem}")
    _check_finite(request.params, "params.")


def _check_worker_pin(store: Store, worker: str) -> None:
    check_id("worker", worker)
    if store.find_resource(worker) is not None:
        return
    known = ", ".join(r.id for r in store.list_resources()) or "none registered"
    raise BadInput(f"unknown worker {worker!r}: known workers: {known}")


#: AssignRequest fields that go into the StrategySpec as they are, when given: every setting.
SPEC_OPTIONS = tuple(s.name for s in spec_settings())


def _spec(request: AssignRequest, path: Path) -> StrategySpec:
    """The StrategySpec with every option the request left out at its default."""
    from quantlab.child import loader  # with ast and subprocess (Node): only commands that assign need it

    options = {
        name: value
        for name in SPEC_OPTIONS
        if (value := getattr(request, name)) is not None
    }
    accounts = request.accounts if request.accounts is not None else loader.default_accounts(path)
    return StrategySpec(
        file=str(path),
        params=request.params,
        accounts=accounts,
        placement=Placement(region=request.region, worker=request.worker),
        **options,
    )


def _assign_id(given: str | None, path: Path) -> str:
    if given is not None:
        return _strategy_id(given)
    try:
        return _strategy_id(path.stem)
    except BadInput as e:
        raise BadInput(f"{e}; name it with --id") from e


def checked_spec(store: Store, request: AssignRequest, path: Path) -> tuple[str, StrategySpec]:
    """The id and spec ``request`` asks for, every option checked (``path``: a checked strategy file)."""
    work_id = _assign_id(request.id, path)
    _check_options(request)
    if request.worker is not None:
        _check_worker_pin(store, request.worker)
    return work_id, _spec(request, path)


def submit(store: Store, work_id: str, spec: StrategySpec, now: float, *, detail: str = "") -> Work:
    """Write a new Work with desired=running (or, over one being removed, the new one that waits for it).

    The state of an id submitted anew is forgotten at the Work's epoch: a re-created
    strategy starts from an empty state, and the old child's late writes are refused.
    """
    try:
        work = store.add_work(wm.submit(work_id, spec, now))
        record_events(store, [Event(ts=now, kind=EventKind.SUBMITTED, strategy=work_id, detail=detail)])
        return work
    except Conflict:
        try:
            change = wm.apply(store, work_id, wm.resubmit(spec, now))
        except wm.Refused as e:
            raise Conflict(str(e)) from None
    assert change.work is not None
    _forget_state(store, work_id, change.work.epoch)
    return change.work


def _forget_state(store: Store, work_id: str, epoch: int) -> None:
    """Empty the state as of ``epoch``: the fenced-off child's late writes are refused from now on.

    A newer epoch may hold it already (the old holder let go and the id was placed anew
    meanwhile): then there is nothing of ours left to forget.
    """
    try:
        store.save_state(work_id, epoch, b"null")
    except StaleWriter:
        pass


def assign(store: Store, request: AssignRequest, *, clock: Clock = time.time) -> Work:
    """Write a new Work with desired=running; the director places it, a worker starts it."""
    from quantlab.child import loader

    path = loader.check_file(request.file)
    work_id, spec = checked_spec(store, request, path)
    return submit(store, work_id, spec, clock(), detail=str(path))


# ---- lifecycle of one strategy: each a transition of quantlab/store/workmachine.py ----


def _transition(store: Store, work_id: str, transition: wm.Transition) -> Work | None:
    try:
        return wm.apply(store, _strategy_id(work_id), transition).work
    except wm.Refused as e:
        raise BadInput(str(e)) from None


def _kept(store: Store, work_id: str, transition: wm.Transition) -> Work:
    """``_transition`` of one that never deletes the Work: the Work as it landed."""
    work = _transition(store, work_id, transition)
    assert work is not None
    return work


#: Times a command goes back to the Work machine when the record it found undecodable decodes again.
CORRUPT_RETRIES = 3


def _transition_or_discard(
    store: Store, work_id: str, make: Callable[[float], wm.Transition], clock: Clock, doing: str
) -> tuple[Work | None, bool]:
    """``make(now)`` through the Work machine, or, when the Work does not decode, its removal; True when removed so.

    The machine cannot read such a record, yet the operator must be able to get rid of it: it
    is removed as it is, and its worker, finding it gone, stops its child.
    """
    for _ in range(CORRUPT_RETRIES):
        try:
            return _transition(store, work_id, make(clock())), False
        except CorruptRecord as e:
            error = e
            if store.discard_work(_strategy_id(work_id)):
                store.warn(f"strategy {work_id!r} does not decode ({e}): {doing}; its spec, params and status "
                           f"are lost, and its saved state is forgotten")
                record_events(store, [Event(ts=clock(), kind=EventKind.REMOVED, strategy=work_id,
                                            detail="its record did not decode")])
                return None, True
            # False: it decodes again (written anew meanwhile), so it goes through the machine
    raise error


def stop(store: Store, work_id: str, *, clock: Clock = time.time) -> Work:
    """desired=stopped; the worker calls st_exit(reason=manual). Works no worker took stop at once.

    A Work whose record does not decode cannot carry a stop: it is removed (with a warning).
    """
    work, removed = _transition_or_discard(
        store, work_id, wm.request_stop, clock, "a stop cannot be written on it, so it was removed"
    )
    if removed:
        now = clock()
        return Work(id=work_id, spec=StrategySpec(file=""), desired="removed", created=now,
                    result=StrategyResult(status="stopped", reason="removed: its record did not decode", updated=now))
    assert work is not None
    return work


def start(store: Store, work_id: str, *, clock: Clock = time.time) -> Work:
    """Run a stopped or failed strategy again (no-op for one that runs)."""
    return _kept(store, work_id, wm.request_start(clock()))


def restart(store: Store, work_id: str, *, clock: Clock = time.time, file_checked: bool = False) -> Work:
    """Like start, and a running child is restarted: its worker sees restart_seq change.

    Its file is checked first, as `assign` checks it (``file_checked``: the caller did, with
    ``check_files``): a file saved with an error would put a running strategy into a crash
    loop, while refused here its child runs on as it was.
    """
    if not file_checked:
        check_files(store, [work_id])
    return _kept(store, work_id, wm.request_start(clock(), restart=True))


def check_files(store: Store, work_ids: list[str]) -> None:
    """Every strategy's file loads (loader.check_file), or StrategyFileError naming the strategy."""
    from quantlab.child import loader  # with ast and subprocess (Node): only commands that restart need it

    for work_id in work_ids:
        work = store.get_work(_strategy_id(work_id))
        try:
            loader.check_file(work.spec.file)
        except StrategyFileError as e:
            raise StrategyFileError(f"{work_id} not restarted, it is left as it was: {e}") from e


def select(store: Store, work_ids: list[str], every: bool) -> list[str]:
    """The strategies a command acts on: every one, or ``work_ids``, each known, checked before any is touched."""
    if every:
        return [w.id for w in store.list_works()]
    for work_id in work_ids:
        try:
            known = store.find_work(_strategy_id(work_id)) is not None
        except CorruptRecord:
            known = True  # the commands deal with it: stop and remove discard it, the others report it
        if not known:
            raise NotFound(f"no strategy {work_id!r}")
    return list(dict.fromkeys(work_ids))  # a repeated id once


def remove(store: Store, work_id: str, *, clock: Clock = time.time, detail: str = "") -> None:
    """Forget the Work and its state; a running child is fenced at once (st_exit with reason ``removed``).

    A Work whose record does not decode is removed as it is (with a warning).
    """
    work, _ = _transition_or_discard(
        store, work_id, lambda now: wm.remove(now, detail=detail), clock, "removed it as it was"
    )
    if work is not None:  # its holder deletes it once the child is gone: its state is forgotten now
        _forget_state(store, work.id, work.epoch)


def send(store: Store, work_id: str, data: Any, *, clock: Clock = time.time) -> None:
    """Queue ``data`` for the strategy's st_message hook; its worker delivers it."""
    if (found := non_finite(data)) is not None:
        raise BadInput(f"message: {found[0] or 'the number'} must be finite, got {shown(found[1])}")
    store.get_work(_strategy_id(work_id))
    store.push_message(work_id, data)
    record_events(store, [Event(ts=clock(), kind=EventKind.MESSAGE_SENT, strategy=work_id)])

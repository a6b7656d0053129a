"""A uid per strategy: the range an operator gives, and which uid each running strategy holds."""

from __future__ import annotations

import logging

import pytest

from quantlab.errors import ConfigError
from quantlab.worker import procs, strategyuids
from quantlab.worker.options import WorkerOptions
from quantlab.worker.spawner import Spawner
from quantlab.worker.strategyuids import UidPool, UidRange
from quantlab.worker.zygote import ForkRequest, Forked
from tests.conftest import in_child
from tests.unit.test_spawner import FakeZygote


def test_two_running_strategies_never_share_a_uid_and_each_gets_its_own_back() -> None:
    pool = UidPool(UidRange(61000, 61002))
    a, b, c = (pool.take(name) for name in ("a", "b", "c"))
    assert len({a, b, c}) == 3 and all(uid is not None and 61000 <= uid <= 61002 for uid in (a, b, c))
    assert pool.take("d") is None  # every uid is held
    assert a is not None and b is not None
    pool.release(a)
    assert pool.take("a") == a  # its own, free again once its child was reaped
    pool.release(b)
    pool.release(a)
    assert pool.take("d") is not None and pool.take("b") is not None and pool.take("a") is None


def test_a_strategys_first_uid_comes_from_its_id() -> None:
    assert UidPool(UidRange(61000, 61999)).take("alpha") == UidPool(UidRange(61000, 61999)).take("alpha")


@pytest.mark.parametrize(("given", "said"), [
    ("61000", "--strategy-uids '61000': give a range of uids, FIRST-LAST, e.g. 61000-61999"),
    ("62000-61000", "--strategy-uids 62000-61000: give FIRST <= LAST between 1000 and 65533 (below 1000 are the "
                    "system's users)"),
    ("0-100", "--strategy-uids 0-100: give FIRST <= LAST between 1000 and 65533 (below 1000 are the system's users)"),
    ("61000-61004", "--strategy-uids 61000-61004 holds 5 uids: fewer than --max-strategies (20), and no two "
                    "strategies share one"),
])
def test_a_range_strategies_cannot_use_is_one_line_naming_the_option(given: str, said: str) -> None:
    with pytest.raises(ConfigError) as e:
        WorkerOptions(strategy_uids=given).resolved("host")
    assert str(e.value) == said


def test_a_worker_without_the_capabilities_to_switch_uids_is_told_which_it_lacks() -> None:
    def refused() -> str:
        procs.lock_down()  # no capability left, as an ordinary user's worker
        try:
            strategyuids.pool(UidRange(61000, 61999))
        except ConfigError as e:
            return str(e)
        return "no error"

    assert in_child(refused) == ("--strategy-uids 61000-61999 needs root, or CAP_KILL, CAP_SETGID, CAP_SETUID: this worker lacks "
                    "CAP_KILL, CAP_SETGID, CAP_SETUID")


def _last_uid(zygote: FakeZygote) -> int:
    request = zygote.requests[-1]
    assert isinstance(request, ForkRequest)
    return request.uid


def test_the_spawner_gives_each_fork_a_uid_and_takes_it_back_when_the_fork_fails_or_the_child_is_reaped() -> None:
    zygote = FakeZygote()
    spawner = Spawner(lambda: zygote, lambda fd, _: None, lambda fd: None, logging.getLogger("test"),
                      uids=UidPool(UidRange(61000, 61001)))
    answers: list[Forked] = []
    for name in ("a", "b", "c"):
        spawner.fork(ForkRequest(endpoint="ipc:///x", token=b"t", log_path="/dev/null", strategy=name), answers.append)
    assert answers == [Forked(error="every uid of --strategy-uids 61000-61001 is held by a running strategy")]
    sent = [r for r in zygote.requests if isinstance(r, ForkRequest)]
    assert sorted(r.uid for r in sent) == [61000, 61001]
    zygote.ready = [Forked(pid=7), Forked(error="fork failed")]  # a's child runs, b's fork failed
    spawner.receive()
    spawner.fork(ForkRequest(endpoint="ipc:///x", token=b"t", log_path="/dev/null", strategy="c"), answers.append)
    assert _last_uid(zygote) == sent[1].uid  # b's, given back
    spawner.forget(7)  # a's child reaped
    spawner.fork(ForkRequest(endpoint="ipc:///x", token=b"t", log_path="/dev/null", strategy="a"), answers.append)
    assert _last_uid(zygote) == sent[0].uid

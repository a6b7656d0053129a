"""The Spawner with a scripted zygote and clock: answers come later, a silent or dead zygote is replaced."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from quantlab.worker.spawner import DEADLINE, Spawner
from quantlab.worker.zygote import Forget, ForkRequest, Forked


class FakeZygote:
    count = 0

    def __init__(self) -> None:
        FakeZygote.count += 1
        self.proc = SimpleNamespace(pid=1000 + FakeZygote.count)
        self.requests: list[ForkRequest | Forget] = []
        self.ready: list[Forked] | None = []  #: what answers() returns next (None: it is gone)
        self.killed = False

    def send(self, request: ForkRequest | Forget) -> None:
        self.requests.append(request)

    def answers(self) -> list[Forked] | None:
        ready = self.ready
        self.ready = [] if ready is not None else None
        return ready

    def fileno(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.killed = True

    def close(self) -> None:
        pass


class Env:
    def __init__(self) -> None:
        self.now = 0.0
        self.zygotes: list[FakeZygote] = []
        self.watched: set[int] = set()
        self.answers: list[tuple[str, Forked]] = []
        self.spawner = Spawner(self._start, lambda fd, _: self.watched.add(fd), self.watched.discard,
                               logging.getLogger("test"), clock=lambda: self.now)

    def _start(self) -> FakeZygote:
        self.zygotes.append(FakeZygote())
        return self.zygotes[-1]

    def fork(self, name: str) -> None:
        request = ForkRequest(endpoint="ipc:///x", token=b"t", log_path="/dev/null")
        self.spawner.fork(request, lambda forked: self.answers.append((name, forked)))


def test_answers_come_when_the_zygote_gives_them_and_a_silent_zygote_is_replaced() -> None:
    env = Env()
    env.fork("a")
    env.fork("b")
    assert env.answers == []  # nothing waited for
    env.now = DEADLINE + 1
    env.spawner.check()
    assert len(env.zygotes) == 1  # a new zygote's first answer may take its start too
    env.zygotes[0].ready = [Forked(pid=7)]
    env.now = DEADLINE - 1
    env.spawner.receive()
    assert env.answers == [("a", Forked(pid=7))]
    env.now = 2 * DEADLINE - 1.5  # b is owed, but the zygote answered a only a moment ago
    env.spawner.check()
    assert len(env.zygotes) == 1
    env.now = 2 * DEADLINE
    env.spawner.check()
    assert env.zygotes[0].killed and len(env.zygotes) == 2 and env.watched == {env.zygotes[1].fileno()}
    assert env.answers[1][0] == "b" and "did not answer" in env.answers[1][1].error
    env.spawner.check()  # the new zygote owes nothing
    assert len(env.zygotes) == 2


def test_a_zygote_that_died_is_replaced_at_once_and_its_forks_fail() -> None:
    env = Env()
    env.fork("a")
    env.zygotes[0].ready = None
    env.spawner.receive()
    assert len(env.zygotes) == 2 and "exited" in env.answers[0][1].error
    env.fork("b")
    assert isinstance(env.zygotes[1].requests[0], ForkRequest)

"""Group commit of strategy states: many epoch-fenced state writes as one durable step.

A worker answers the heartbeats of every strategy that spoke in one loop pass
with one write to its store, not one per strategy: the file store makes them
durable with one sync of its filesystem, PostgreSQL with one statement (one
transaction, one WAL flush). Each write keeps the rule of a single one: it is
refused (StaleWriter) when a newer epoch holds that state, and only that one
is refused. A write that lost a race to another writer is decided again on the
new head, like every compare-and-swap in the store.
"""

from __future__ import annotations

from typing import Callable, Sequence

import msgspec

from quantlab.errors import Conflict, CorruptRecord, StaleWriter
from quantlab.store.records import StrategyState
from quantlab.store.table import Head

#: Rounds of a batch before it gives up (each lost race means another writer made progress).
ROUNDS = 1000

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(StrategyState).decode


class StateWrite(msgspec.Struct, frozen=True):
    """One strategy's new state, written as the holder of ``epoch``."""

    work_id: str
    epoch: int
    state_json: bytes


#: What became of one write: None when it is durable, else the error (StaleWriter, CorruptRecord).
Outcome = Exception | None

HeadsOf = Callable[[list[str]], list[Head]]
#: Commits (key, base, data) triples as one durable step; for each, whether it won its race.
CommitMany = Callable[[list[tuple[str, Head, bytes]]], list[bool]]


def save_states(writes: Sequence[StateWrite], heads_of: HeadsOf, commit_many: CommitMany) -> list[Outcome]:
    """Write every state in ``writes``; one outcome each, in order. Raises when the store fails."""
    outcomes: dict[int, Outcome] = {}
    todo = list(range(len(writes)))
    for _ in range(ROUNDS):
        if not todo:
            return [outcomes[i] for i in range(len(writes))]
        batch: list[tuple[int, Head, bytes]] = []
        for i, head in zip(todo, heads_of([writes[i].work_id for i in todo])):
            try:
                batch.append((i, head, _decide(writes[i], head)))
            except (StaleWriter, CorruptRecord) as e:
                outcomes[i] = e
        won = commit_many([(writes[i].work_id, head, data) for i, head, data in batch]) if batch else []
        todo = []
        for (i, _, _), ok in zip(batch, won):
            if ok:
                outcomes[i] = None
            else:
                todo.append(i)
    raise Conflict(f"state writes: gave up after {ROUNDS} lost races")


def _decide(write: StateWrite, head: Head) -> bytes:
    if head.data is not None:
        try:
            current = _decode(head.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise CorruptRecord(f"state/{write.work_id} version {head.version} does not decode: {e}") from None
        if current.epoch > write.epoch:
            raise StaleWriter(f"state of {write.work_id!r} is held by epoch {current.epoch}, not {write.epoch}")
    return _encode(StrategyState(epoch=write.epoch, state=msgspec.Raw(write.state_json)))

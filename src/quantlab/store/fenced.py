"""FencedStore, the workerpool API over a Store: what workers and the director call.

Named for what sets it apart from the Store under it, not a pool: the exchange
clients per account are the one pool (ApiPool, quantlab/exchange/apipool.py).

Writes about a running strategy are transitions of the Work machine
(quantlab/store/workmachine.py) that carry the (worker, epoch) they act under:
once the Work has moved on they are refused, so a worker that lost its lease
can never overwrite the new owner's record. The strategy's state is fenced the same way,
by the epoch stamped in the state record itself.
"""

from __future__ import annotations

import time
from typing import Any, Callable, ContextManager, Sequence

import msgspec

from quantlab.errors import CorruptRecord
from quantlab.store.records import Event, EventKind, Resource, Work, WorkerState
from quantlab.store.statewrites import Outcome, StateWrite
from quantlab.store import workmachine as wm
from quantlab.store.store import Store


class FencedStore:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    # ---- the workerpool API: registration, lease, assigned Works ----

    def register_resource(self, resource: Resource) -> None:
        """Write our registration (the caller has checked that the id is ours to hold)."""
        self.store.update_resource(resource.id, lambda current: resource)

    def unregister_resource(self, worker_id: str, instance: str) -> None:
        """Delete our registration, unless another process holds the id by now."""
        self.store.remove_resource(worker_id, lambda r: r.spec.instance == instance)

    def update_resource_state(self, resource: Resource, state: WorkerState) -> bool:
        """Renew our lease with ``state``; False when the record is gone or held by someone else."""
        renewed = False

        def renew(current: Resource | None) -> Resource | None:
            nonlocal renewed
            renewed = current is not None and current.spec.instance == resource.spec.instance
            if not renewed:
                return None
            state.renewals = current.state.renewals + 1  # type: ignore[union-attr]
            return msgspec.structs.replace(resource, state=state)

        self.store.update_resource(resource.id, renew, announce=False)
        if renewed:
            resource.state = state
        return renewed

    def get_assigned_works(self, worker_id: str) -> list[Work]:
        return [w for w in self.store.list_works() if w.assignment and w.assignment.worker == worker_id]

    def get_work(self, work_id: str) -> Work | None:
        return self.store.find_work(work_id)

    # ---- the Work's lifecycle ----

    def apply(self, work_id: str, transition: wm.Transition) -> wm.Change:
        """One transition of the Work machine through the store's compare-and-swap (workmachine.apply)."""
        return wm.apply(self.store, work_id, transition)

    # ---- fenced strategy state ----

    def claim_state(self, work_id: str, epoch: int) -> dict[str, Any]:
        """Stamp the strategy's state with ``epoch`` and return it (before its child's first tick).

        From then on a write from an older epoch is refused. Raises StaleWriter when a
        newer epoch already holds the state, CorruptRecord when the stored state does not
        decode (the strategy must fail with that reason, never start from {}).
        """
        record = self.store.save_state(work_id, epoch, None)
        if record.empty:
            return {}
        try:
            state = msgspec.json.decode(record.state)
        except msgspec.DecodeError as e:
            raise CorruptRecord(f"the saved state of {work_id!r} does not decode: {e}") from None
        if not isinstance(state, dict):
            raise CorruptRecord(f"the saved state of {work_id!r} is not a JSON object")
        return state

    def save_state(self, work_id: str, epoch: int, state_json: bytes) -> None:
        """Write the state as the holder of ``epoch``; StaleWriter when a newer epoch holds it."""
        self.store.save_state(work_id, epoch, state_json)

    def durable_together(self) -> ContextManager[None]:
        """This thread's writes inside are made durable together at the end (Store.durable_together)."""
        return self.store.durable_together()

    def durable_later(self) -> ContextManager[None]:
        """This thread's writes inside wait for a later ``sync()`` to be durable (Store.durable_later)."""
        return self.store.durable_later()

    def sync(self) -> None:
        self.store.sync()

    def save_states(self, writes: Sequence[StateWrite]) -> list[Outcome]:
        """Write many states as one durable step (group commit); per write None or its StaleWriter."""
        return self.store.save_states(writes)

    def load_state(self, work_id: str) -> dict[str, Any]:
        """The state as it is now, for people and tests: {} when there is none."""
        record = self.store.load_state(work_id)
        if record is None or record.empty:
            return {}
        value = msgspec.json.decode(record.state)
        return value if isinstance(value, dict) else {}

    def event(self, kind: EventKind, *, strategy: str | None = None, worker: str | None = None, detail: str = "") -> None:
        self.store.append_event(Event(ts=self.clock(), kind=kind, strategy=strategy, worker=worker, detail=detail))

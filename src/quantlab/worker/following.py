"""What the store says should run here, carried over to the worker's strategies.

Each look at the store hands over every Work this worker may hold: a strategy
that runs here follows its Work (stopped, restarted, moved away: machine
events), a Work newly placed here is adopted (a fenced write: until it lands,
the director may still take it back) and started, and a Work this worker holds
but runs no child of is let go. Nothing new is taken on a lapsed lease.
"""

from __future__ import annotations

from typing import Callable

import msgspec

from quantlab.config import Paths
from quantlab.errors import NotFound, QuantlabError
from quantlab.files import private_dir
from quantlab.store import workmachine as wm
from quantlab.store.fenced import FencedStore
from quantlab.store.records import EventKind, ExitReason, Work
from quantlab.worker import machine as m
from quantlab.worker.lease import Lease
from quantlab.worker.report import Reporter
from quantlab.worker.slot import Slot

Feed = Callable[[Slot, m.Event], list[m.Action]]


class Following:
    def __init__(
        self,
        *,
        worker_id: str,
        slots: dict[str, Slot],
        feed: Feed,
        supervision: Callable[[Work], m.Supervision],
        fenced_store: FencedStore,
        reporter: Reporter,
        lease: Lease,
        paths: Paths,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.worker_id = worker_id
        self.slots = slots  #: the manager's strategies: an adopted Work joins them
        self.feed = feed  #: the manager steps the slot's machine and performs what it says
        self.supervision = supervision  #: the machine's settings for a Work as it is now
        self.fenced_store = fenced_store
        self.reporter = reporter
        self.lease = lease
        self.paths = paths
        self.clock = clock
        self.wall = wall

    def reconcile(self, works: list[Work]) -> None:
        """Carry the store's Works over to this worker: follow what runs, adopt what is new, let go of the rest."""
        by_id = {w.id: w for w in works}
        for slot in list(self.slots.values()):
            self._follow(slot, by_id.get(slot.id))
        if not self.lease.ok():
            return  # take nothing new on a lapsed lease
        fresh = [w for w in works if w.id not in self.slots and wm.holds(w, self.worker_id)]
        if not fresh:
            return
        with self.fenced_store.durable_together():  # a hundred adopted at once: one sync
            for work in fresh:
                if wm.placed_on(work, self.worker_id):
                    self._adopt(work)
                elif not self.reporter.holds_unsettled(work.id):
                    self._let_go(work)

    def _follow(self, slot: Slot, work: Work | None) -> None:
        """Carry a store change over to a slot."""
        fenced = wm.exit_reason(work, self.worker_id, slot.assignment.epoch)
        if fenced is not None:
            self.feed(slot, m.StopWanted(fenced))
            return
        assert work is not None
        known_restart, slot.work = slot.work.spec.restart_seq, work  # the spec of its next start
        if work.desired == "stopped":
            self.feed(slot, m.StopWanted(ExitReason(type="manual", message="stopped by operator"), by_operator=True))
            return
        if m.operator_stop(slot.machine):  # `start` while the operator's stop is under way: it ends running
            self.feed(slot, m.StartWanted())
        if work.spec.restart_seq != known_restart:
            self.feed(slot, m.RestartWanted())

    def _adopt(self, work: Work) -> None:
        """Take a Work placed here (a write: until it lands, the director may still take it back), then start it."""
        assert work.assignment is not None
        try:
            adopted = self.fenced_store.apply(work.id, wm.adopt(self.worker_id, work.assignment.epoch, self.wall())).work
        except (wm.Refused, NotFound):
            return  # taken back or changed meanwhile: the next reconcile sees what it is now
        except (OSError, QuantlabError) as e:
            self.reporter.store_failed(None, f"taking {work.id}", e)
            return
        assert adopted is not None
        log_path = self.paths.strategy_log(work.id)
        private_dir(log_path.parent)
        slot = Slot(adopted, log_path, m.new_machine(self.supervision(adopted), self.clock()))
        self.slots[work.id] = slot
        self.reporter.note(EventKind.ACCEPTED, slot, f"epoch {slot.assignment.epoch}")
        self.feed(slot, m.Due())

    def _let_go(self, work: Work) -> None:
        """A Work this worker holds but runs no child of (stopped, removed or moved meanwhile): release it."""
        assert work.assignment is not None
        reason = wm.exit_reason(work, self.worker_id, work.assignment.epoch)
        why = reason.message if reason is not None else "stopped by operator"
        result = msgspec.structs.replace(work.result, reason=why)
        transition = wm.release(self.worker_id, work.assignment.epoch, "stopped", result, self.wall())
        try:
            self.fenced_store.apply(work.id, transition)
        except (wm.Refused, NotFound):
            pass
        except (OSError, QuantlabError) as e:
            self.reporter.store_failed(None, f"letting go of {work.id} ({why})", e)

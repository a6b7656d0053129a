"""What goes to the children: each strategy's messages queued until its child can take them.

A message waits in the slot's outbox while the child is not connected yet (no
Hello) or its socket is at ZeroMQ's high-water mark; later passes send it. A
child that lets OUTBOX_LIMIT messages pile up does not read its socket: it is
charged as hung. Past the lease only what ends a child goes out: a Stop, and
answers to calls it waits on.
"""

from __future__ import annotations

import logging
from typing import Callable

from quantlab.protocol import ApiResult, Stop, ToChild
from quantlab.store.records import EventKind
from quantlab.worker import machine as m
from quantlab.worker.lease import Lease
from quantlab.worker.peers import Peers
from quantlab.worker.slot import Slot
from quantlab.worker.transport import Transport

#: Messages waiting for one child before it is declared hung (it does not read its socket).
OUTBOX_LIMIT = 1000


class Outboxes:
    def __init__(
        self, transport: Transport, peers: Peers, lease: Lease, log: logging.Logger, hung: Callable[[Slot, m.Charge], object]
    ) -> None:
        self.transport = transport
        self.peers = peers
        self.lease = lease
        self.log = log
        self.hung = hung  #: the manager charges the strategy (a Fault)
        self.backlogged: dict[str, Slot] = {}  #: slots with messages their child could not take yet

    def send(self, slot: Slot, msg: ToChild) -> None:
        """Queue ``msg`` for the child and send what it can take now; the rest goes on later passes."""
        if slot.pid is None:
            return
        if not self.lease.ok() and not isinstance(msg, (Stop, ApiResult)):
            self.log.info("lease ran out: not sending %s to %s", type(msg).__name__, slot.id)
            return
        slot.outbox.append(msg)
        self.flush(slot)

    def flush(self, slot: Slot) -> None:
        """Send what the child can take of its outbox now."""
        peer = self.peers.peer(slot.key)  # None until its Hello: everything waits here
        while slot.outbox and peer is not None and self.transport.send(peer, slot.outbox[0]):
            slot.outbox.popleft()
        if slot.outbox:
            self.backlogged[slot.id] = slot
        else:
            self.backlogged.pop(slot.id, None)
        if len(slot.outbox) > OUTBOX_LIMIT:
            slot.outbox.clear()
            self.hung(slot, m.Charge(EventKind.HEARTBEAT_TIMEOUT, f"hung: {OUTBOX_LIMIT} messages to it could not be delivered"))

    def forget(self, slot_id: str) -> None:
        self.backlogged.pop(slot_id, None)

"""The worker's end of the strategy channel: one ZeroMQ ROUTER on ipc://.

Sends never block and never drop: with ROUTER_MANDATORY a message to a child
that is not connected yet, or whose pipe is at the high-water mark, is
refused (``send`` returns False) and stays in the manager's outbox for that
child, to be sent again on the next pass.

The socket lives in a fresh directory only the worker's user can open
(mkdtemp makes it 0700), so no other user can connect; with a uid per strategy
(quantlab/worker/strategyuids.py) the children are other users, so the
directory is 0711 and the socket 0666, and any local user may connect. That
adds no reach: every strategy child of the worker could connect already, so
nothing read here is trusted: who a connection speaks for is
the Hello token's to say (quantlab/worker/peers.py), and a frame that does not
decode, or is over its kind's size, comes out as Garbled for the manager to
charge to its sender. Message shapes and limits are in quantlab/protocol.py.

Fair share: ``receive`` reads at most RECEIVE_BATCH messages a call, so the loop
gets back to its ticks and its lease between batches however much is waiting.
The ROUTER takes them from its connections in turn (ZeroMQ fair-queues its
inbound pipes), so a batch holds every busy child's messages, not one child's
backlog.
"""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import msgspec
import zmq

from quantlab.protocol import MAX_FRAME, ToChild, ToWorker, decode_to_worker, encode, frame_limit

#: Messages ZeroMQ may queue per child before a send is refused; the manager's outbox holds the rest.
SEND_HWM = 1000
#: Messages one ``receive`` reads at most. One dropped over budget costs the loop ~1 us here (read
#: and budget check), plus the socket's own work; within budget, a ctx.send is an event write. So a
#: batch holds the next tick back a few ms at most.
RECEIVE_BATCH = 200
# Plain ints: pyzmq's flags are enum.Flag members, and combining them costs more than the send.
_FIRST = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)


class Garbled(msgspec.Struct, frozen=True):
    """A frame that is no message the worker takes: why, for its sender's charge."""

    why: str


class Channel:
    def __init__(self, context: zmq.Context, log: logging.Logger, others: bool = False) -> None:
        """``others``: other users (strategies under uids of their own) may connect."""
        # Under /tmp, not the home: ipc:// paths must stay under ~100 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="qlab-"))
        self.endpoint = f"ipc://{self.dir}/channel"
        self.log = log
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable send raises instead of vanishing
        self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)  # a larger frame closes its connection unread
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.endpoint)
        if others:
            # Search, not list, on the folder: connecting to the socket needs write on it.
            self.dir.chmod(0o711)
            (self.dir / "channel").chmod(0o666)

    def send(self, routing_id: bytes, msg: ToChild) -> bool:
        """True when ZeroMQ took the message; False when the child cannot take it now (try again later)."""
        try:
            # The routing frame cannot be refused alone: ZeroMQ takes or refuses the whole message.
            self.socket.send(routing_id, _FIRST)
            self.socket.send(encode(msg), _LAST)
        except zmq.Again:
            return False  # the child's pipe is full
        except zmq.ZMQError as e:
            if e.errno != errno.EHOSTUNREACH:
                raise
            return False  # not connected yet (or gone: its exit comes through its pidfd)
        return True

    def receive(self) -> Iterator[tuple[bytes, ToWorker | Garbled]]:
        """The messages waiting now, RECEIVE_BATCH at most, without blocking: each with its connection's routing id."""
        for _ in range(RECEIVE_BATCH):
            if not self.socket.getsockopt(zmq.EVENTS) & _POLLIN:  # no zmq.Again raised to end every batch
                return
            try:
                frames = self.socket.recv_multipart(_LAST)
            except zmq.Again:
                return
            if len(frames) != 2:
                yield frames[0], Garbled(f"{len(frames) - 1} frames in one message, not 1")
            else:
                yield frames[0], read(frames[1])

    def close(self) -> None:
        self.socket.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def read(frame: bytes) -> ToWorker | Garbled:
    """The message in ``frame``, or Garbled: whatever a sender put there, nothing raises."""
    try:
        msg = decode_to_worker(frame)
    except Exception as e:  # DecodeError, ValidationError, RecursionError from deep nesting, MemoryError
        return Garbled(f"a frame that does not decode: {type(e).__name__}: {str(e)[:200]}")
    limit = frame_limit(type(msg))
    if len(frame) > limit:
        return Garbled(f"a {type(msg).__name__} of {len(frame):,} bytes, over its limit of {limit:,}")
    return msg

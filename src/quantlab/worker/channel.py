"""The worker's end of the strategy channel: one ZeroMQ ROUTER on ipc://.

Sends never block and never drop: with ROUTER_MANDATORY a message to a child
that is not connected yet, or whose pipe is at the high-water mark, is
refused (``send`` returns False) and stays in the manager's outbox for that
child, to be sent again on the next pass.

The socket lives in a fresh directory only the worker's user can open
(mkdtemp makes it 0700), so no other user can connect and pose as a strategy.
Message shapes are in quantlab/protocol.py.
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

from quantlab.protocol import ToChild, ToWorker, decode_to_worker, encode

#: Messages ZeroMQ may queue per child before a send is refused; the manager's outbox holds the rest.
SEND_HWM = 1000
# Plain ints: pyzmq's flags are enum.Flag members, and combining them costs more than the send.
_FIRST = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)


class Channel:
    def __init__(self, context: zmq.Context, log: logging.Logger) -> None:
        # Under /tmp, not the home: ipc:// paths must stay under ~100 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="qlab-"))
        self.endpoint = f"ipc://{self.dir}/channel"
        self.log = log
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable send raises instead of vanishing
        self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.endpoint)

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

    def receive(self) -> Iterator[tuple[bytes, ToWorker]]:
        """Every message waiting now, without blocking."""
        while self.socket.getsockopt(zmq.EVENTS) & _POLLIN:  # no zmq.Again raised to end every batch
            try:
                frames = self.socket.recv_multipart(_LAST)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            try:
                yield frames[0], decode_to_worker(frames[1])
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                self.log.warning("bad message from %r: %s", frames[0], e)

    def close(self) -> None:
        self.socket.close()
        shutil.rmtree(self.dir, ignore_errors=True)

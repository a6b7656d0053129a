"""Who is on the worker's channel: connections bound to strategy incarnations by their Hello's token.

Any strategy child of a worker can open connections to its channel, under any
routing id it likes (quantlab/protocol.py). So a connection speaks for an
incarnation only once it said Hello with that incarnation's token: a secret the
worker made for it and handed over only through the zygote's fork. A token
binds one connection, once; what comes from any other connection is dropped and
counted here, and the count is logged at most once every LOG_EVERY seconds (a
stranger sending a million frames must not write a million lines).

Incarnations are named by their key (``b"<strategy id>#<incarnation>"``), which
never travels on the wire.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable

#: Seconds between log lines about dropped messages.
LOG_EVERY = 10.0


class Peers:
    def __init__(self, log: logging.Logger, clock: Callable[[], float]) -> None:
        self.log = log
        self.clock = clock
        self.waiting: dict[bytes, bytes] = {}  #: token -> key of the incarnation it is for (not bound yet)
        self.bound: dict[bytes, bytes] = {}  #: routing id -> key
        self.peer_of: dict[bytes, bytes] = {}  #: key -> routing id
        self.token_of: dict[bytes, bytes] = {}  #: key -> its token, while it waits
        self.dropped: collections.Counter[str] = collections.Counter()  #: since the last log line, by reason
        self.logged_at = -LOG_EVERY

    def expect(self, key: bytes, token: bytes) -> None:
        """A child was forked for incarnation ``key`` with ``token``: its Hello may bind a connection."""
        self.forget(key)
        self.waiting[token] = key
        self.token_of[key] = token

    def bind(self, peer: bytes, token: bytes) -> bytes | None:
        """The key whose token this is, when it waits and ``peer`` is not bound yet; None (counted) otherwise."""
        if peer in self.bound:
            self.drop("a second Hello on a bound connection")
            return None
        key = self.waiting.pop(token, None)
        if key is None:
            self.drop("a Hello with a wrong or used token")
            return None
        del self.token_of[key]
        self.bound[peer] = key
        self.peer_of[key] = peer
        return key

    def key(self, peer: bytes) -> bytes | None:
        """The incarnation ``peer`` speaks for, None when it said no good Hello."""
        return self.bound.get(peer)

    def peer(self, key: bytes) -> bytes | None:
        """The connection incarnation ``key`` speaks on, None before its Hello."""
        return self.peer_of.get(key)

    def forget(self, key: bytes) -> None:
        """Incarnation ``key`` is gone: its token binds nothing any more, its connection speaks for no one."""
        token = self.token_of.pop(key, None)
        if token is not None:
            self.waiting.pop(token, None)
        peer = self.peer_of.pop(key, None)
        if peer is not None:
            self.bound.pop(peer, None)

    def drop(self, why: str) -> None:
        """A message from no known incarnation was dropped: counted, and logged now and then."""
        self.dropped[why] += 1
        now = self.clock()
        if now - self.logged_at < LOG_EVERY:
            return
        self.logged_at = now
        counts = ", ".join(f"{n} ({why})" for why, n in self.dropped.most_common())
        self.log.warning("channel: dropped %s messages from connections that did not say Hello with a valid token: %s",
                         sum(self.dropped.values()), counts)
        self.dropped.clear()

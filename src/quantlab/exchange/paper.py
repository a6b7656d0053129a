"""PaperExchange: a simulated Bybit v5 account that answers pybit method calls offline.

``call(method, kwargs)`` takes pybit's method names and Bybit's camelCase
parameters and returns the real exchange's envelope, numbers as strings;
errors are envelopes with Bybit's retCode, never exceptions. Linear USDT
perpetuals (market data also answers "spot"), one-way mode, whole fills, fixed
leverage, no funding, no liquidation.

The account is one JSON document in the store. Every call first matches
resting orders against the walk up to ``clock()``; calls that change the
account do it inside ``store.update_blob`` (one compare-and-swap), so
processes sharing an account lose no order and a new PaperExchange continues
where the last stopped. Reads write only when that matching filled an order.
What each method does is quantlab/exchange/paper_methods.py's; this module
loads and stores the account around it, and keeps its orderLinkIds.

The simulator is the exchange, so it checks the fence where the order takes
effect: a write carries a ``Guard`` (the strategy, its epoch, and the pool's
check of its lease, its Work's epoch in the store and the halts), run inside
the compare-and-swap that records the write, on every attempt of it. A check
alone is not enough, since a writer may pause between the check and its
commit; so whoever takes a strategy over or halts trading also writes to the
account document first (``seal``, ``note_halt``): a paused writer's commit then
loses its race, runs again, and meets the raised epoch token or the halt.
Hence an intent that reconciliation settled as absent can never land later,
and nothing that opens exposure lands after ``qlab halt`` has returned.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import zlib
from typing import Any, Callable, NamedTuple

import msgspec

from quantlab.errors import ApiError, BadInput
from quantlab.store.store import Store
from quantlab.exchange import paper_state
from quantlab.exchange.accounts import Account
from quantlab.exchange.job import Failure
from quantlab.exchange.paper_methods import READS, WRITES, Call, Handler
from quantlab.exchange.paper_state import Market, PaperState, advance, match_resting

log = logging.getLogger(__name__)

BLOB_KIND = "paper"  #: store.get_blob(BLOB_KIND, account name) holds the account
#: store.get_blob(ARCHIVE_KIND, "<account>.<shard>") holds orderLinkIds older than the document's list.
ARCHIVE_KIND = "paper-links"
ARCHIVE_SHARDS = 64  #: shards of the archive: a placement reads one, of 1/64 of the old ids
ARCHIVE_BATCH = 1_000  #: ids moved to the archive at a time, once the document holds this many extra

#: Built here, on the importing thread: msgspec works out a Struct's field types on first use, and
#: a decode racing that on another thread (the API and reconciliation threads) crashed a worker.
_decode_state = msgspec.json.Decoder(PaperState).decode


class Guard(NamedTuple):
    """Who makes a call, for the checks it meets where it takes effect."""

    strategy: str  #: "" for the worker's own calls (cancels of a halt, of a reconciliation): no epoch token
    epoch: int
    check: Callable[[], None]  #: raises a Failure when the caller may not act now (fence, halt, pool closed)


def _check(guard: Guard, state: PaperState) -> None:
    """Refuse a write the account's epoch token, the caller's fence or a halt forbids; raises Failure."""
    lowest = state.fences.get(guard.strategy, 0) if guard.strategy else 0
    if guard.epoch < lowest:
        raise Failure(f"strategy {guard.strategy}'s epoch {guard.epoch} is fenced off: epoch {lowest} "
                      "has taken it over; call refused", 0, "permission")
    guard.check()


class PaperExchange:
    """One paper account; safe to call from several threads and several processes at once."""

    def __init__(self, account: Account, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.account = account
        self._store = store
        self._clock = clock
        # filelock polls every 50 ms when contended: this process's writers queue here instead.
        self._lock = threading.Lock()

    def call(self, method: str, kwargs: dict[str, Any], guard: Guard | None = None) -> dict[str, Any]:
        """Run one pybit method; a Bybit v5 envelope, or the Failure ``guard`` raised (nothing written then)."""
        ms = self._ms()
        try:
            result = self._dispatch(method, kwargs, guard)
        except Failure:
            raise
        except ApiError as e:
            return _envelope(ms, {}, e.ret_code, e.message)
        except Exception as e:  # a bug or an unreadable store reaches the strategy as Bybit's 10016
            log.exception("paper account %s: %s failed", self.account.name, method)
            return _envelope(ms, {}, 10016, f"paper account error: {e}")
        return _envelope(ms, result)

    def set_price(self, symbol: str, price: float) -> None:
        """Pin ``symbol``'s price from now on (tests and benchmarks); resting orders it reaches fill."""
        if not (math.isfinite(price) and price > 0):
            raise BadInput(f"price must be a positive number, got {price!r}")

        def pin(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
            call.state.pins[symbol] = price
            match_resting(call.state, symbol, price, price, call.ms)
            return {}

        self._write(pin, {})

    def _ms(self) -> int:
        return int(self._clock() * 1000)

    def seal(self, strategy: str, epoch: int) -> None:
        """From now on take no write of ``strategy`` from an epoch below ``epoch``.

        One compare-and-swap on the account: a write of an older epoch that checked its fence
        before it and commits after it loses its race, and is checked again against the token.
        """

        def raise_token(call: Call, kwargs: dict[str, Any]) -> dict[str, Any]:
            call.state.fences[strategy] = max(epoch, call.state.fences.get(strategy, 0))
            return {}

        raw = self._store.get_blob(BLOB_KIND, self.account.name)
        if raw is None or _decode_state(raw).fences.get(strategy, 0) < epoch:  # restarts at one epoch write nothing
            self._write(raise_token, {})

    def _dispatch(self, method: str, kwargs: dict[str, Any], guard: Guard | None) -> dict[str, Any]:
        if not isinstance(kwargs, dict):
            raise ApiError("parameters must be keyword arguments", 10001)
        if method in WRITES:
            return self._write(WRITES[method], kwargs, guard)
        if method in READS:
            if guard is not None:
                guard.check()  # a read changes nothing: checking it before is enough
            return self._read(READS[method], kwargs)
        raise ApiError(f"paper account does not support {method}", 10001)

    def _load(self, raw: bytes | None, ms: int) -> PaperState:
        if raw is None:
            return PaperState(balances=dict(self.account.balances), checked_at=ms // 1000)
        return _decode_state(raw)

    def _read(self, handler: Handler, kwargs: dict[str, Any]) -> dict[str, Any]:
        ms = self._ms()
        state = self._load(self._store.get_blob(BLOB_KIND, self.account.name), ms)
        market = Market(self.account.seed, state.pins)
        if advance(state, market, ms):
            # Persist the fill: once the catch-up window moves past it, it could not be found again.
            self._write(None, {})
        return handler(Call(self.account, state, market, ms, self._archived), kwargs)

    def _write(self, handler: Handler | None, kwargs: dict[str, Any], guard: Guard | None = None) -> dict[str, Any]:
        """Run ``handler`` on the stored state as one compare-and-swap; store the result unless refused.

        ``guard`` is checked inside the same compare-and-swap, on every attempt of it.
        """
        outcome: dict[str, Any] = {}

        def update(raw: bytes | None) -> bytes | None:
            outcome.clear()  # a store may run ``update`` again after a conflict: only the last run counts
            ms = self._ms()  # read in each attempt, so the walk anchor never moves backwards
            state = self._load(raw, ms)
            market = Market(self.account.seed, state.pins)
            filled = advance(state, market, ms)
            try:
                if guard is not None:
                    _check(guard, state)
            except Failure as refused:
                outcome["refused"] = refused
                return msgspec.json.encode(state) if filled else None
            try:
                outcome["result"] = handler(Call(self.account, state, market, ms, self._archived), kwargs) if handler else {}
                if guard is not None and guard.strategy:
                    paper_state.stamp(state, outcome["result"], guard.strategy, guard.epoch, ms)
            except ApiError as e:
                outcome["error"] = e
                return msgspec.json.encode(state) if filled else None  # refused, but the fills stand
            return msgspec.json.encode(state) if handler or filled else None

        with self._lock:
            if guard is not None:
                self._create()
            raw = self._store.update_blob(BLOB_KIND, self.account.name, update)
            self._archive_overflow(raw)
        if "refused" in outcome:
            raise outcome["refused"]
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _create(self) -> None:
        """Store the account before its first guarded write, as a write of its own.

        A halt touches the paper accounts that exist when it is written; a first write that
        created the document in its own commit could check the halts before the halt and create
        the document after the halt's touch, unseen by it.
        """
        if self._store.get_blob(BLOB_KIND, self.account.name) is not None:
            return

        def create(raw: bytes | None) -> bytes | None:
            return None if raw is not None else msgspec.json.encode(self._load(None, self._ms()))

        self._store.update_blob(BLOB_KIND, self.account.name, create)

    # ---- the orderLinkId archive ----
    #
    # Bybit never accepts an orderLinkId twice, so neither may the simulator, however long the
    # account lives; the document holds the newest ids and the archive every older one. Ids are
    # written to the archive first and trimmed from the document after, so at every moment each
    # is in one place or both: a crash in between leaves it in both, and the next trim goes on.

    def _archived(self, link_id: str) -> bool:
        return link_id in self._shard(self._shard_key(link_id))

    def _shard_key(self, link_id: str) -> str:
        return f"{self.account.name}.{zlib.crc32(link_id.encode()) % ARCHIVE_SHARDS:02d}"

    def _shard(self, key: str) -> set[str]:
        raw = self._store.get_blob(ARCHIVE_KIND, key)
        return set(msgspec.json.decode(raw, type=list[str])) if raw else set()

    def _archive_overflow(self, raw: bytes | None) -> None:
        """Move the oldest ids out of the document once it holds a batch more than it keeps."""
        if raw is None:
            return
        ids = _decode_state(raw).link_ids
        keep = paper_state.LINK_IDS_KEEP
        batch = min(ARCHIVE_BATCH, max(1, keep // 2))  # small bounds (tests) archive in smaller batches
        if len(ids) <= keep + batch - 1:
            return
        moving = ids[: len(ids) - keep]
        by_shard: dict[str, list[str]] = {}
        for link_id in moving:
            by_shard.setdefault(self._shard_key(link_id), []).append(link_id)
        for key, added in by_shard.items():
            self._store.update_blob(ARCHIVE_KIND, key, functools.partial(_union, added=added))
        gone = set(moving)

        def trim(old: bytes | None) -> bytes | None:
            if old is None:
                return None
            state = _decode_state(old)
            kept = [i for i in state.link_ids if i not in gone]
            state.archived += len(state.link_ids) - len(kept)
            state.link_ids = kept
            return msgspec.json.encode(state)

        self._store.update_blob(BLOB_KIND, self.account.name, trim)


def note_halt(store: Store) -> None:
    """Write to every paper account after a halt is written, so a write that read the halts
    before the halt and commits after it loses its race and reads them again."""
    for name in store.blob_keys(BLOB_KIND):
        try:
            store.update_blob(BLOB_KIND, name, _bump_halts_seen)
        except msgspec.DecodeError:
            log.warning("paper account %s does not decode: it takes no order anyway", name)


def _bump_halts_seen(raw: bytes | None) -> bytes | None:
    if raw is None:
        return None
    state = _decode_state(raw)
    state.halts_seen += 1
    return msgspec.json.encode(state)


def _union(old: bytes | None, *, added: list[str]) -> bytes:
    ids = msgspec.json.decode(old, type=list[str]) if old else []
    known = set(ids)
    return msgspec.json.encode(ids + [i for i in added if i not in known])


def _envelope(ms: int, result: dict[str, Any], code: int = 0, message: str = "OK") -> dict[str, Any]:
    return {"retCode": code, "retMsg": message, "result": result, "retExtInfo": {}, "time": ms}

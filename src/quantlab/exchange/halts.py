"""The kill switch: halts on everything, an account, a worker or a strategy, kept in the store.

    qlab halt --all | --account A | --worker W | --strategy S [--cancel-orders]
    qlab resume --all | --account A | --worker W | --strategy S
    qlab halt --repair    (a document that does not decode becomes one halt on everything)

A halt is one entry in a single store document (blob ``halts/halts``), changed
by compare-and-swap, so it survives restarts of every process and every
worker sees the same list. While a halt covers a call (its worker, strategy or
account), the API pool refuses the call if it could open or increase exposure
(quantlab/exchange/calls.py: reduce-only orders, cancels and reads pass). The
pool reads the document as each such call is signed, so nothing that opens
exposure leaves after ``qlab halt`` has returned; and it fails closed: a
document that cannot be read or decoded halts everything.

A live order that passed the gate just before the halt may still be on its
way, but only within its recv_window: it was signed with the exchange's time
taken before the gate passed it (quantlab/exchange/signing.py). So ``qlab halt``
returns once the longest window of the live orders still open at the halt has
closed (``landing_wait``); with none open (paper accounts, a quiet account) at once.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Literal, get_args

import msgspec

from quantlab.errors import BadInput, CorruptRecord, NotFound
from quantlab.exchange import intents
from quantlab.exchange.signing import MAX_RECV_WINDOW_MS, WINDOW_SLACK
from quantlab.store.store import Store, check_id

BLOB_KIND = "halts"
BLOB_KEY = "halts"
#: The retCode of a call refused by a halt (quantlab's own: Bybit has none for it).
HALTED = 170999

Scope = Literal["all", "account", "worker", "strategy"]


class Halt(msgspec.Struct, frozen=True, kw_only=True):
    scope: Scope
    target: str = ""  #: the account, worker or strategy id; "" for all
    ts: float  #: when it was written (Unix time, for people)
    cancel_orders: bool = False  #: cancel the open orders of the accounts it covers
    cancelled_by: tuple[str, ...] = ()  #: workers that have cancelled their accounts' orders for it

    @property
    def label(self) -> str:
        return "all" if self.scope == "all" else f"{self.scope} {self.target}"

    def covers(self, worker: str, strategy: str, accounts: Iterable[str]) -> bool:
        if self.scope == "all":
            return True
        if self.scope == "worker":
            return self.target == worker
        if self.scope == "strategy":
            return self.target == strategy
        return self.target in accounts


class Halts(msgspec.Struct, kw_only=True):
    halts: list[Halt] = []

    def covering(self, worker: str, strategy: str, accounts: Iterable[str]) -> Halt | None:
        names = list(accounts)
        return next((h for h in self.halts if h.covers(worker, strategy, names)), None)

    def by_scope(self) -> dict[str, int]:
        """How many halts of each scope, every scope listed (0 when none): a gauge per scope must drop to 0."""
        counts = dict.fromkeys(get_args(Scope), 0)
        for halt in self.halts:
            counts[halt.scope] += 1
        return counts


#: What a reader that cannot read the document must assume: everything is halted.
UNREADABLE = Halts(halts=[Halt(scope="all", ts=0.0)])

_decoder = msgspec.json.Decoder(Halts)


def _unreadable(why: object) -> CorruptRecord:
    return CorruptRecord(f"the halts document (blob {BLOB_KIND}/{BLOB_KEY}) does not decode: {why}; "
                         "`qlab halt --repair` replaces it with a halt on everything")


def _decode(raw: bytes) -> Halts:
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as e:  # ValidationError is one: a user sees one line, never a traceback
        raise _unreadable(e) from e


def read(store: Store) -> Halts:
    """The halts in force; raises when the document cannot be read or decoded (callers fail closed)."""
    raw = store.get_blob(BLOB_KIND, BLOB_KEY)
    return Halts() if raw is None else _decode(raw)


def read_or_closed(store: Store) -> tuple[Halts, str | None]:
    """The halts, or UNREADABLE and why when they cannot be read."""
    try:
        return read(store), None
    except Exception as e:  # a full disk, a corrupt document, a database away: fail closed
        return UNREADABLE, f"halt state unreadable ({type(e).__name__}: {e}): treated as halted"


def _change(store: Store, edit: Callable[[Halts], Halts | None]) -> Halts:
    def update(raw: bytes | None) -> bytes | None:
        changed = edit(Halts() if raw is None else _decode(raw))
        return None if changed is None else msgspec.json.encode(changed)

    try:
        raw = store.update_blob(BLOB_KIND, BLOB_KEY, update)
    except CorruptRecord as e:  # torn where it is stored (its file's header), not only in what it says
        raise _unreadable(e) from e
    return Halts() if raw is None else _decode(raw)


def _checked(scope: Scope, target: str) -> str:
    if scope == "all":
        return ""
    if not target:
        raise BadInput(f"halt --{scope} needs a name")
    return check_id(scope, target)


def halt(store: Store, scope: Scope, target: str = "", *, cancel_orders: bool = False,
         clock: Callable[[], float] = time.time) -> Halt:
    """Write a halt (or refresh one with the same scope and target); the halt in force."""
    target = _checked(scope, target)
    new = Halt(scope=scope, target=target, ts=clock(), cancel_orders=cancel_orders)

    def add(halts: Halts) -> Halts:
        others = [h for h in halts.halts if (h.scope, h.target) != (scope, target)]
        return Halts(halts=[*others, new])

    _change(store, add)
    _note_paper(store)
    return new


def landing_wait(store: Store) -> float:
    """Seconds from a halt's commit until no live order signed before it can be taken any more.

    Read after the commit: an order that passed the gate before it had its intent written
    before it too. Intents that cannot be read count as the longest window.
    """
    try:
        window = intents.longest_open_window(store)
    except Exception:  # a corrupt intents document, a database away: assume the worst
        window = MAX_RECV_WINDOW_MS
    return window / 1000 + WINDOW_SLACK if window else 0.0


def repair(store: Store, clock: Callable[[], float] = time.time) -> Halt:
    """Replace a halts document that does not decode with one halt on everything (lifted by resume).

    What the unreadable document held cannot be known, so the repair keeps what readers already
    assume of it: everything halted. NotFound when the document decodes: nothing is lost then.
    """
    new = Halt(scope="all", ts=clock())

    def replace(raw: bytes | None) -> bytes:
        try:
            _decode(raw or b"{}")
        except CorruptRecord:
            return msgspec.json.encode(Halts(halts=[new]))
        raise NotFound("the halts document decodes: nothing to repair")

    try:
        store.update_blob(BLOB_KIND, BLOB_KEY, replace)
    except CorruptRecord as e:  # torn where it is stored, not only in what it says
        store.update_blob(BLOB_KIND, BLOB_KEY, lambda _: msgspec.json.encode(Halts(halts=[new])), over_corrupt=e.version)
    _note_paper(store)
    return new


def _note_paper(store: Store) -> None:
    # Paper accounts check the halts inside the write that records an order: touching each one
    # makes a write that read the halts before this one commit only after reading them again.
    from quantlab.exchange import paper  # the simulator loads only where halts are written

    paper.note_halt(store)


def resume(store: Store, scope: Scope, target: str = "") -> bool:
    """Lift the halt of that scope and target; False when there was none."""
    target = _checked(scope, target)
    found = False

    def remove(halts: Halts) -> Halts | None:
        nonlocal found
        kept = [h for h in halts.halts if (h.scope, h.target) != (scope, target)]
        found = len(kept) != len(halts.halts)
        return Halts(halts=kept) if found else None

    _change(store, remove)
    return found


def mark_cancelled(store: Store, halt: Halt, worker: str) -> None:
    """Note that ``worker`` cancelled its orders for ``halt`` (so a restart does not do it again)."""

    def mark(halts: Halts) -> Halts | None:
        updated = [
            msgspec.structs.replace(h, cancelled_by=(*h.cancelled_by, worker))
            if (h.scope, h.target, h.ts) == (halt.scope, halt.target, halt.ts) and worker not in h.cancelled_by
            else h
            for h in halts.halts
        ]
        return Halts(halts=updated) if updated != halts.halts else None

    _change(store, mark)

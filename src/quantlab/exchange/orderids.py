"""orderLinkIds that name their strategy and epoch: ``<tag>-<epoch>-<seq>``, at most 36 characters.

Bybit accepts an orderLinkId once (per account, for a long time) and lets it
be queried, so an id made by quantlab does three jobs: it makes a resend of
the same order harmless (the exchange refuses the copy), it lets a timed-out
order be found again by query instead of being sent again, and it tells
reconciliation which open orders belong to which strategy and epoch.

The tag is the strategy id when it fits Bybit's alphabet (letters, digits,
``_`` and ``-``) in 16 characters; otherwise a readable prefix of it and a
hash of the whole id, so two strategies never share a tag by accident.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_LENGTH = 36  #: Bybit's limit
MAX_TAG = 16
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


class LinkId(NamedTuple):
    tag: str
    epoch: int
    seq: int


def tag(strategy: str) -> str:
    """The strategy's tag in its orderLinkIds."""
    if _SAFE.match(strategy):
        return strategy
    # Imported here: hashlib loads OpenSSL, and `qlab status` reads this module without making a tag.
    import hashlib

    digest = hashlib.sha1(strategy.encode()).hexdigest()[:7]
    return f"{_UNSAFE.sub('_', strategy)[:MAX_TAG - 8]}_{digest}"


def make(strategy: str, epoch: int, seq: int) -> str:
    link = f"{tag(strategy)}-{epoch}-{seq}"
    if len(link) > MAX_LENGTH:  # only with an epoch or a sequence in the billions
        raise ValueError(f"orderLinkId {link!r} is longer than {MAX_LENGTH} characters")
    return link


def parse(link_id: str) -> LinkId | None:
    """The parts of an id made by `make`; None for any other id (one the strategy chose)."""
    head, sep, rest = link_id.rpartition("-")
    owner, sep2, epoch = head.rpartition("-")
    if not (sep and sep2 and owner and epoch.isdigit() and rest.isdigit()):
        return None
    return LinkId(owner, int(epoch), int(rest))


def owned_by(link_id: str, strategy: str) -> LinkId | None:
    """The parts of ``link_id`` when quantlab made it for ``strategy``."""
    parts = parse(link_id)
    return parts if parts is not None and parts.tag == tag(strategy) else None

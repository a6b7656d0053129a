"""The seam between the StrategyManager and the operating system.

Every process and socket call the manager needs (forks asked of the zygote,
pidfd and waitpid, killpg, ZeroMQ sends, psutil) is behind this protocol:
Worker (quantlab/worker/main.py) implements it, unit tests fake it.
"""

from __future__ import annotations

from typing import Callable, Protocol

from quantlab.exchange.apipool import Caller
from quantlab.exchange.reconcile import Reconciled, Request
from quantlab.exchange.signing import Fence
from quantlab.protocol import ApiCall, ToChild
from quantlab.worker.zygote import Forked, ForkRequest


class Transport(Protocol):
    """How the manager reaches processes and sockets: the worker loop provides it, tests fake it."""

    endpoint: str

    def fork(self, request: ForkRequest, answer: Callable[[Forked], None], on_exit: Callable[[int], None]) -> None:
        """Ask for a child without waiting: ``answer`` runs once, later, with its pid or why it failed;
        ``on_exit(wait status)`` runs once the child is reaped (its group killed first)."""
        ...

    def kill(self, pid: int) -> None:
        """SIGKILL the child's whole process group (what it leaves elsewhere is ended as it is reaped)."""
        ...

    def send(self, routing_id: bytes, msg: ToChild) -> bool:
        """True when sent; False when the child cannot take it now (not connected, pipe full)."""
        ...

    def submit_api(self, key: bytes, call: ApiCall, allowed: list[str], fence: Fence, caller: Caller) -> None:
        """Run the call on the API pool; ``fence`` is checked on the pool's thread as the call is signed.

        ``key``: the calling incarnation's (Slot.key), handed back with its answer to ``deliver_api_result``.
        """
        ...

    def reconcile(self, request: Request, fence: Fence, done: Callable[[Reconciled], None]) -> None:
        """Reconcile a strategy before its start on the API pool; ``done`` runs later on the loop's thread."""
        ...

    def memory_mb(self, pid: int) -> float:
        """Resident memory of the child and its descendants, in MB (0 when it is gone)."""
        ...

    def drain(self, timeout: float) -> None:
        """Handle the children's messages that arrive within ``timeout`` seconds."""
        ...

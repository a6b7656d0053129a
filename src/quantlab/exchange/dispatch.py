"""Whether a call may go at all, and the threads calls run on.

Secrets never leave the worker: a strategy sends ``ApiCall(account, method,
kwargs)`` and gets an ``ApiResult`` back. Before any client is touched, the
dispatcher checks that the strategy may use that account, that the method is
on the allowlist and its arguments fit it (quantlab/exchange/allowlist.py,
arguments.py), and that a call which changes something carries a fence
(quantlab/exchange/calls.py, signing.py). A call that could open exposure gets
a halt gate that reads the halts as the call is signed
(quantlab/exchange/halts.py), failing closed, so nothing that opens exposure
leaves after ``qlab halt`` has returned. Then a strategy's order takes the
order path (quantlab/exchange/placing.py), an amend or a cancel of its orders
the ownership and notional checks (quantlab/exchange/changing.py), and any
other call is sent as it is (quantlab/exchange/sending.py). Every outcome, a
bug of ours included, becomes an ``ApiResult``: the dispatcher never raises to
a strategy.

Each account has its own queue and threads: a call waiting for one account's
rate limit (or a slow reply) never holds a thread another account needs. Every
call has a deadline from its submission; one that cannot start before it is
refused unsent. Reconciliation waits on several calls in turn, so it gets
threads of its own and never holds an account's.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Collection

from quantlab.errors import ApiError
from quantlab.exchange import allowlist, arguments, calls, halts
from quantlab.exchange.accounts import Account
from quantlab.exchange.job import Caller, Failure, Job, failed
from quantlab.exchange.changing import CHANGES, OrderChanger
from quantlab.exchange.placing import OrderPlacer
from quantlab.exchange.sending import Sender
from quantlab.exchange.signing import Fence
from quantlab.protocol import ApiCall, ApiResult
from quantlab.store.store import Store

log = logging.getLogger(__name__)

#: Threads for reconciliation and halts' cancels, apart from every account's, started as needed:
#: starts that wait for an account's rate limit together share its list reads
#: (quantlab/exchange/sharedreads.py), as many as there are threads to wait on them. With 8, twenty
#: starts on an account allowed 2 calls a second took four rounds of reads, a second each.
RECONCILING_THREADS = 32


class Dispatcher:
    """Gates each call, runs it on its account's threads, and answers it with an ApiResult."""

    def __init__(
        self, accounts: list[Account], store: Store, sender: Sender, placer: OrderPlacer, *, worker: str,
        threads: int, clock: Callable[[], float], call_deadline: float,
    ) -> None:
        self._accounts = {account.name: account for account in accounts}
        self._store = store  # the halts are read from it as each call that opens exposure is signed
        self._sender = sender
        self._placer = placer
        self._changer = OrderChanger(store, sender, placer.last_price)
        self._worker = worker
        self._clock = clock
        self._call_deadline = call_deadline  #: seconds from submission within which a call must start
        # One queue and its threads per account (threads start on demand).
        self._queues = {
            a.name: ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"api-{a.name}") for a in accounts
        }
        self._reconciling = ThreadPoolExecutor(max_workers=RECONCILING_THREADS, thread_name_prefix="reconcile")

    def run(self, call: ApiCall, allowed: Collection[str], fence: Fence | None, caller: Caller) -> ApiResult:
        """Run one call on this thread and wait for it; never raises."""
        return self._answer(Job(call, allowed, fence, self._clock() + self._call_deadline, caller))

    def submit(
        self, call: ApiCall, allowed: Collection[str], done: Callable[[ApiResult], None], fence: Fence | None,
        caller: Caller,
    ) -> None:
        """Run ``call`` on its account's queue, then ``done(result)`` on that thread.

        A call refused before it is queued (an account not served, after close()) has ``done``
        run at once on the caller's thread.
        """
        job = Job(call, allowed, fence, self._clock() + self._call_deadline, caller)
        queue = self._queues.get(call.account)
        try:
            if queue is None:
                raise RuntimeError("no such account")  # _answer refuses it with the permission message
            queue.submit(self._answer_and_deliver, job, done)
        except RuntimeError:  # not served, or the queue is shut down
            _deliver(done, self._answer(job))

    def aside(self, run: Callable[[], None]) -> bool:
        """Run ``run`` on a reconciliation thread; False (not run) once closed."""
        try:
            self._reconciling.submit(run)
        except RuntimeError:  # closed
            return False
        return True

    def close(self) -> None:
        """Let running calls finish and drop queued ones."""
        self._reconciling.shutdown(wait=False, cancel_futures=True)
        for queue in self._queues.values():
            queue.shutdown(wait=False, cancel_futures=True)
        for queue in self._queues.values():
            queue.shutdown(wait=True)

    def _answer_and_deliver(self, job: Job, done: Callable[[ApiResult], None]) -> None:
        _deliver(done, self._answer(job))

    def _answer(self, job: Job) -> ApiResult:
        call = job.call
        try:
            account = self._permitted(call, job.allowed)
            if job.caller.strategy:  # the worker's own calls (a halt's cancels) are its own arguments
                arguments.check(call.method, call.kwargs)
            if calls.fenced(call.method) and job.fence is None:
                raise Failure(f"{call.method!r} changes the account and needs a fence; refused", 0, "permission")
            fence = job.fence if calls.fenced(call.method) else None  # reads skip the lease check
            gate = self._halt_gate(account, job) if calls.opens_exposure(call.method, call.kwargs) else None
            if call.method in calls.ORDER_METHODS and job.caller.strategy:
                result = self._placer.place(account, job, fence, gate)
            elif call.method in CHANGES and job.caller.strategy:
                result = self._changer.change(account, job, fence, gate)
            else:
                result = self._sender.attempts(account, call, fence, job.deadline, gate, caller=job.caller)
            return ApiResult(call_id=call.call_id, ok=True, result=result)
        except Failure as failure:
            return failed(call.call_id, self._sender.scrubbed(failure, call.account))
        except ApiError as e:  # a judgement of ours on what the exchange answered (a list too long to count)
            return failed(call.call_id, self._sender.scrubbed(Failure(str(e), e.ret_code, "api"), call.account))
        except Exception as e:  # a bug of ours must not kill the pool thread or leave a call unanswered
            log.exception("API call %s on %s failed unexpectedly", call.method, call.account)
            return failed(call.call_id, Failure(f"internal error: {type(e).__name__}", 0, "api"))

    def _permitted(self, call: ApiCall, allowed: Collection[str]) -> Account:
        """The account, if the strategy may use it and the method is on the allowlist."""
        account = self._accounts.get(call.account)
        if call.account not in allowed or account is None:
            raise Failure(f"account {call.account!r} is not available to this strategy", 0, "permission")
        refused = allowlist.refusal(call.method)
        if refused is not None:
            raise Failure(refused, 0, "permission")
        return account

    def _halt_gate(self, account: Account, job: Job) -> Callable[[], None]:
        """A check, run as the call is signed, that no halt covers it (fail closed: unreadable = halted)."""

        def gate() -> None:
            found, problem = halts.read_or_closed(self._store)
            halt = found.covering(self._worker, job.caller.strategy, [account.name])
            if halt is not None:
                why = problem or f"halted ({halt.label})"
                raise Failure(f"{job.call.method}: {why}: calls that open exposure are refused", halts.HALTED, "halted")

        return gate


def _deliver(done: Callable[[ApiResult], None], result: ApiResult) -> None:
    try:
        done(result)
    except Exception:  # the executor would swallow it silently
        log.exception("API result callback failed for call %d", result.call_id)

"""`qlab worker start`: the worker process and its event loop.

One thread runs the loop; a zmq Poller watches the ROUTER socket, every
child's pidfd (a death is seen at once, not at the next heartbeat), the
signal wake-up pipe and the API pool's completion eventfd. API calls run on
the pool's threads so one slow exchange call never stalls another strategy's
ticks; their results come back through a queue and the eventfd. The zygote's
socket is in the poller too: a fork is asked for and its answer read later,
never waited for. The worker reaps the orphans it inherits as a subreaper, and
kills those that are no child of its (a strategy's helpers). Timers use the
monotonic clock; the wall clock only stamps what people read.

Worker has more than 15 methods: the manager's Transport and the loop's steps share one poller and its fds.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import select
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import zmq

from quantlab import heap
from quantlab.config import Paths
from quantlab.errors import ConfigError, NotFound
from quantlab.logsetup import process_logger
from quantlab.store.fenced import FencedStore
from quantlab.store.open import open_store
from quantlab.store.records import ExitReason, Resource, TickInfo, WorkerSpec, WorkerState
from quantlab.store.stepguard import StepGuard
from quantlab.store import workmachine
from quantlab.store.store import Store
from quantlab.store.tablestore import TableStore
from quantlab.store.view import WorkView
from quantlab.protocol import ApiCall, ApiResult, ToChild
from quantlab.signals import ChildExits, StopRequest
from quantlab.worker import pidns, procs, sandbox, strategyuids
from quantlab.worker.fenceguard import FenceGuard
from quantlab.worker.procs import Children
from quantlab.exchange.accounts import load_accounts, take_proxy, take_secrets
from quantlab.exchange.apipool import ApiPool, Caller
from quantlab.exchange.reconcile import Reconciled, Request
from quantlab.exchange.signing import Fence
from quantlab.worker.channel import Channel
from quantlab.worker.context import WorkerContext, WorkerIdentity, load_hooks
from quantlab.worker.lifecycle import follow_changes, st_worker_exit, st_worker_heartbeat, st_worker_init
from quantlab.worker.manager import StrategyManager
from quantlab.ops.metrics import WorkerMetrics
from quantlab.worker.options import WorkerOptions
from quantlab.worker.registration import WorkerIdLock, new_instance, process_started
from quantlab.worker.childenv import strategy_environment
from quantlab.worker.family import Family
from quantlab.worker.spawner import Spawner
from quantlab.worker.zygote import Forked, ForkRequest, Zygote

#: Seconds between checks of the store's change token (how fast a new assignment is seen).
CHANGE_POLL = 0.02
#: Seconds between looks for processes re-parented to the worker that are not its children
#: (also after every reaped child): one read of its /proc children list.
STRAYS_EVERY = 0.25


class Worker:
    """One worker process: its parts, built here in the order they need each other, its loop, and
    the process plumbing the StrategyManager uses (its Transport)."""

    def __init__(self, store: Store, options: WorkerOptions, paths: Paths, log: logging.Logger, stop: StopRequest,
                 metrics: WorkerMetrics | None, hooks: ModuleType | None) -> None:
        self.store = store
        self.options = options
        self.log = log
        self.stop = stop
        self.steps = StepGuard(store, log, who=f"worker {options.id}", worker=options.id)
        self.child_exits = ChildExits().install()  # before the zygote: no exit goes unseen
        accounts_path = _accounts_path(options, paths)
        accounts = load_accounts(accounts_path)
        take_secrets(accounts)  # out of the environment before anything is started
        proxy = take_proxy(options.proxy)
        uids = strategyuids.pool(options.uid_range)  # before anything is started: it may be refused
        #: Every child (each leads its own group and session), where the zygote and our next run find them.
        self.family = Family(paths.worker_children(options.id), log)
        self.family.end_previous()  # before anything is forked; the id lock makes the list ours alone
        self.context = zmq.Context()
        self.channel = Channel(self.context, log, others=uids is not None)
        self.endpoint = self.channel.endpoint
        self.poller = zmq.Poller()
        # Every plain fd (a pidfd per child, the signal pipe, the API eventfd) sits in one epoll, and
        # only the epoll's fd in the zmq poller: a pass then polls 2 fds instead of one per child.
        self.fds = select.epoll()
        self.handlers: dict[int, Callable[[], None]] = {}
        self.api_done: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()  # run on the loop's thread
        self.api_wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        env = strategy_environment(accounts)
        private = [str(paths.home), *([str(accounts_path)] if accounts_path else [])]  # out of every child's reach
        for line in sandbox.missing(options.uid_range):
            log.warning("sandbox: %s", line)
        namespaces = pidns.probe(options.uid_range) is not pidns.Level.NONE
        self.spawner = Spawner(lambda: Zygote(env, options.id, str(self.family.path), private, namespaces), self.watch,
                               self.unwatch, log, uids=uids)
        self.strays_at = 0.0  #: when the next look for strays is due (monotonic)
        self.apis = ApiPool(accounts, store, proxy=proxy, worker=options.id, instance=new_instance(paths.host_name),
                            current=functools.partial(_holder_current, store),
                            wait_observer=metrics.rate_limit_waited if metrics is not None else None)
        self.children = Children(self.watch, self.unwatch, log)
        self.manager = StrategyManager(
            worker_id=options.id, fenced_store=FencedStore(store), transport=self, paths=paths, log=log,
            guard=FenceGuard(self.children.kill_all, log), metrics=metrics, log_settings=options.log_settings,
        )
        self.poller.register(self.channel.socket, zmq.POLLIN)
        self.poller.register(self.fds.fileno(), zmq.POLLIN)
        self.watch(stop.fd, stop.drain)
        self.watch(self.child_exits.fd, self._reap_exited)
        self.watch(self.api_wakeup, self._deliver_api_results)
        self.wctx = _context(self, paths, hooks)

    # ---- Transport ----

    def fork(self, request: ForkRequest, answer: Callable[[Forked], None], on_exit: Callable[[int], None]) -> None:
        def forked(reply: Forked) -> None:
            if reply.pid:  # ours from now on, whatever the manager makes of it
                self.family.add(reply.pid)
                self.children.track(reply.pid, functools.partial(self._reaped, reply.pid, on_exit))
            answer(reply)

        self.spawner.fork(request, forked)

    def _reaped(self, pid: int, on_exit: Callable[[int], None], status: int) -> None:
        self.family.remove(pid)
        self.spawner.forget(pid)
        on_exit(status)

    def kill(self, pid: int) -> None:
        # Its helpers in a session of its own are re-parented to us as it dies: strays, ended at its reaping.
        procs.kill_group(pid)

    def send(self, routing_id: bytes, msg: ToChild) -> bool:
        return self.channel.send(routing_id, msg)

    def memory_mb(self, pid: int) -> float:
        return procs.tree_memory_mb(pid)

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        self.handlers[fd] = handler
        self.fds.register(fd, select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        self.fds.unregister(fd)

    def submit_api(self, key: bytes, call: ApiCall, allowed: list[str], fence: Fence, caller: Caller) -> None:
        def done(result: ApiResult) -> None:  # runs on an API pool thread
            self._on_loop(lambda: self.manager.deliver_api_result(key, result))
            if self.manager.metrics is not None:
                self.manager.metrics.api_call(call.account, result.ok, result.kind)

        self.apis.submit(call, allowed, done, fence, caller)

    def reconcile(self, request: Request, fence: Fence, done: Callable[[Reconciled], None]) -> None:
        self.apis.reconcile(request, fence, lambda result: self._on_loop(lambda: done(result)))

    def _on_loop(self, step: Callable[[], None]) -> None:
        """From an API pool thread: run ``step`` on the loop's thread, at its next pass."""
        self.api_done.put(step)
        os.eventfd_write(self.api_wakeup, 1)

    def drain(self, timeout: float) -> None:
        if self.channel.socket.poll(int(timeout * 1000)):
            self._receive()

    def _receive(self) -> None:
        # The zygote's answers first: a child's first message comes only after the answer naming it.
        self.spawner.receive()
        # The writes of one batch of messages (the state claims before each Init, when many
        # strategies start at once) are made durable together: one sync, not three fsyncs each.
        # A claim reaches the disk a moment after its Init left; the file store lives on this
        # host, so whatever loses that moment (a power cut) also ends the child it was for.
        with self.manager.fenced_store.durable_together():
            for routing_id, msg in self.channel.receive():
                self.manager.on_message(routing_id, msg)

    def _reap_exited(self) -> None:
        self.child_exits.drain()  # first: an exit from now on wakes the loop again
        self.children.reap_orphans(self.spawner.reap)  # a zygote, the present one or one replaced, is Popen's to reap
        self._end_strays()  # a dead child's helpers were re-parented to us just now

    def _end_strays(self) -> None:
        """Kill every process re-parented to us that is no child we know of: a strategy's helper
        that outlived its parent, or that left it by a double fork."""
        self.strays_at = time.monotonic() + STRAYS_EVERY
        if self.spawner.owed:
            return  # a child whose answer has not come yet would look like one
        strays = procs.strays(set(self.children.tracked))  # a zygote is in our session: never a stray
        if strays:
            self.log.warning("killing what a strategy left behind: pids %s", " ".join(map(str, strays)))
            procs.kill_trees(strays)

    def _deliver_api_results(self) -> None:
        try:
            os.eventfd_read(self.api_wakeup)
        except BlockingIOError:
            pass
        while not self.api_done.empty():
            self._guarded(self.api_done.get())

    # ---- the loop ----

    def poll_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, then handle whatever became ready."""
        # Rounded up: a deadline 0.4 ms away must not turn into a busy loop of zero-timeout polls.
        events = dict(self.poller.poll(max(0, math.ceil(timeout * 1000))))
        if self.channel.socket in events:
            self._receive()
        if self.fds.fileno() in events:
            for fd, _ in self.fds.poll(0):
                handler = self.handlers.get(fd)
                if handler is not None:
                    self._guarded(handler)
        self._guarded(self.spawner.check)
        if time.monotonic() >= self.strays_at:
            self._guarded(self._end_strays)
        self.manager.supervise()
        self.family.save()

    def _guarded(self, step: Callable[[], object]) -> None:
        # A bug in one step must not end the loop: the children would lose their supervisor.
        try:
            step()
        except Exception:
            self.log.exception("worker loop step failed; carrying on")

    def run_until(self, done: Callable[[], bool], timeout: float, every: Callable[[], None] | None = None) -> None:
        """Serve the children until ``done()`` or ``timeout``, calling ``every`` once a heartbeat."""
        deadline = time.monotonic() + timeout
        next_every = time.monotonic() + self.options.heartbeat
        while not done() and time.monotonic() < deadline:
            now = time.monotonic()
            self.poll_once(min(deadline, self.manager.next_deadline(), now + 0.05) - now)
            if every is not None and time.monotonic() >= next_every:
                every()
                next_every = time.monotonic() + self.options.heartbeat
        self.manager.kill_all("worker stopping")  # whatever did not stop in time
        end = time.monotonic() + 2.0
        while self.manager.slots and time.monotonic() < end:
            self.poll_once(0.05)

    def run(self) -> None:
        """st_worker_init, the loop until a stop is asked for, then st_worker_exit."""
        st_worker_init(self.wctx)
        heap.trim()  # start-up is over: what it freed goes back to the system
        self._serve()
        st_worker_exit(self.wctx, ExitReason(type="manual", message=f"signal {self.stop.signal_name}"))

    def _serve(self) -> None:
        wctx, heartbeat = self.wctx, self.options.heartbeat
        next_beat = next_look = 0.0
        seq = 0
        while not self.stop.requested:
            now = time.monotonic()
            self.poll_once(min(next_beat, self.manager.next_deadline(), next_look) - now)
            now = time.monotonic()
            # The store is looked at every CHANGE_POLL, not on every pass: most passes are a
            # tick or a heartbeat, a hundred a second with a hundred strategies.
            changed = now >= next_look and wctx.view.dirty()
            if now >= next_look:
                next_look = now + CHANGE_POLL
            if now >= next_beat:
                seq += 1
                self._store_step("worker heartbeat", lambda: self._heartbeat(wctx, seq))
                next_beat = now + heartbeat
            elif changed:
                self._store_step("following the store's changes", lambda: follow_changes(wctx))
            wctx.notifier.watchdog()  # only from here: a stuck loop must go quiet

    def _heartbeat(self, wctx: WorkerContext, seq: int) -> None:
        started = time.perf_counter()
        st_worker_heartbeat(wctx, TickInfo(seq=seq, ts=time.time(), interval=self.options.heartbeat))
        if self.manager.metrics is not None:
            self.manager.metrics.worker_heartbeat.observe(time.perf_counter() - started)

    def _store_step(self, what: str, step: Callable[[], None]) -> None:
        # Nothing one record or feed line does (a full disk, a store away: one outage, logged by the reporter)
        # may take the children down with the worker; if it lasts, the lease runs out and the strategies move.
        self.steps.run(what, lambda: self.manager.reporter.through(step))

    def close(self) -> None:
        if self.manager.guard is not None:
            self.manager.guard.close()
        self.children.kill_all()  # nothing outlives the worker, whatever path brought us here
        self.spawner.owed.clear()
        self._end_strays()
        self.family.members.clear()
        self.family.save(force=True)
        self.manager.states.close()  # the last states' sync, before the store closes
        self.spawner.close()
        self.fds.close()
        self.channel.close()
        self.context.term()
        os.close(self.api_wakeup)
        self.child_exits.close()


def _accounts_path(options: WorkerOptions, paths: Paths) -> Path | None:
    if options.accounts_file is None:
        return paths.accounts_file()
    path = Path(options.accounts_file).expanduser()
    if not path.exists():
        raise ConfigError(f"accounts file not found: {path}")
    return path


def run_worker(paths: Paths, options: WorkerOptions) -> int:
    """Run a worker in the foreground until SIGTERM/SIGINT (or `qlab worker stop`)."""
    procs.become_undumpable()  # first: the environment may hold secrets until take_secrets
    short = procs.raise_open_files_limit(options.max_strategies)  # before the store: it holds state logs open
    stop = StopRequest().install()
    procs.become_subreaper()  # before the zygote: its grandchildren must come to us
    pidns.probe(options.uid_range)  # it forks: before any thread starts
    store = open_store(paths)
    id_lock = WorkerIdLock(paths.store, options.id)
    id_lock.take(store)  # before anything else: a second process with our id stops here
    log = process_logger(f"quantlab.worker.{options.id}", paths.worker_log(options.id), options.log_settings)
    if short:
        log.warning(short)
    # The store is opened before the log and the metrics (the id lock is taken through it): they are its to tell.
    if isinstance(store, TableStore):
        store.on_warning = log.warning  # a commit whose feed line or event was not written
    hooks = load_hooks(options.hooks)
    metrics = None
    if options.metrics_port is not None:
        metrics = WorkerMetrics()
        metrics.serve(options.metrics_port)  # before the zygote and the API pool: a port in use leaves nothing to undo
        if isinstance(store, TableStore):  # the stores whose commits can be timed
            store.commit_observer = metrics.time_store(store.round_trips)
    worker = Worker(store, options, paths, log, stop, metrics, hooks)
    try:
        worker.run()
    finally:
        worker.close()
        store.close()
        id_lock.release()
    return 0


def _context(worker: Worker, paths: Paths, hooks: ModuleType | None) -> WorkerContext:
    """The ``wctx`` of the worker's lifecycle and its hooks, over the worker's parts."""
    options, manager = worker.options, worker.manager
    identity = WorkerIdentity(id=options.id, name=options.name, region=options.region, host=paths.host_name)
    resource = Resource(
        id=options.id,
        spec=WorkerSpec(
            name=options.name,
            region=options.region,
            host=identity.host,
            pid=os.getpid(),
            max_strategies=options.max_strategies,
            accounts=worker.apis.names,
            lease_ttl=options.lease_ttl,
            instance=new_instance(identity.host),
            started=process_started(),
            sandbox=" ".join(sandbox.layers(options.uid_range)),
        ),
        state=WorkerState(),
    )
    view = WorkView(
        worker.store,
        wants=lambda change: change.worker == options.id or change.key in manager.slots,
        keeps=lambda work: (work.assignment is not None and work.assignment.worker == options.id) or work.id in manager.slots,
    )
    return WorkerContext(
        worker=identity,
        options=options,
        resource=resource,
        fenced_store=manager.fenced_store,
        apis=worker.apis,
        manager=manager,
        log=worker.log,
        run_until=worker.run_until,
        view=view,
        hooks=hooks,
    )


def _holder_current(store: Store, strategy: str, worker: str, epoch: int) -> bool:
    """May ``worker`` still act for ``strategy`` at ``epoch``? An account hold of one that may not is reclaimed."""
    try:
        return workmachine.current(store.get_work(strategy), worker, epoch)
    except NotFound:
        return False  # the strategy was removed: nothing of its can still be sent
    except Exception:  # the store away: its hold keeps counting, so the limit errs on the safe side
        return True

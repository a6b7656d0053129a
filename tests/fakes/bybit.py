"""A fake Bybit v5 HTTP server that the real pybit client can talk to.

    with FakeBybit() as fake:
        fake.add_key("KEY", "SECRET")
        session = HTTP(api_key="KEY", api_secret="SECRET")
        session.endpoint = fake.url
        session.client.trust_env = False   # HTTP_PROXY must not catch loopback calls

It checks what the real exchange checks (key 10003, timestamp 10002: accepted
only if ``server_time - recv_window <= timestamp < server_time + 1000``, HMAC
over the exact raw payload 10004, required parameters 10001), keeps one
account's orders, positions and wallet behind one lock, logs every request,
sends the rate-limit headers on every reply and plays injected faults;
"hold" keeps a request ``hold_delay`` seconds before judging it, like a slow
network between a paused sender and the exchange; "ack_lost" carries a
request out and then drops the connection, as if the reply were lost.
HTTP/1.1 with exact Content-Length, because pybit keeps connections alive.

``FakeBybit(untidy=Untidy())`` is as untidy as the real exchange: orders show
late in the lists and later still in history, lists come in small pages,
market orders fill in parts, orderLinkIds are checked, and each endpoint
group's rate limit is enforced with 10006 (tests/fakes/bybit_book.py,
tests/fakes/bybit_limits.py). The account's state is in ``Book``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.bybit_book import OPEN, ROUTES, Batched, Book, Outcome, Params, Route, ms
from tests.fakes.bybit_limits import GroupLimits, Untidy

FAULTS = frozenset({"rate_limit", "bad_key", "http_500", "http_403", "slow", "hold", "garbage", "drop", "ack_lost"})


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    params: Params
    api_key: str | None
    verified: bool  #: the request was signed, and the signature checked out
    fault: str | None  #: the injected fault it met, if any
    recv_window: int | None = None  #: X-BAPI-RECV-WINDOW as sent (signed requests)
    arrived: float = 0.0  #: time.monotonic() when it arrived


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str]


class FakeBybit:
    """The fake exchange; a context manager that serves on ``self.url`` while open."""

    def __init__(self, *, slow_delay: float = 5.0, limit: int = 100, rate_limit_reset: float = 0.1,
                 untidy: Untidy | None = None) -> None:
        self.slow_delay = slow_delay  #: seconds a "slow" reply waits (release() ends it early)
        self.hold_delay = 1.0  #: seconds a "hold" request waits before it is judged (release() ends it early)
        self.limit = limit  #: X-Bapi-Limit: calls per key per one-second window (reported, not enforced)
        self.rate_limit_reset = rate_limit_reset  #: seconds from a "rate_limit" fault to its reset time
        self.skew_ms = 0  #: added to the server's clock, to provoke 10002
        self._lock = threading.Condition()
        self._exchange = Book(self._now, untidy)  # /v5/market/time answers with the skewed clock too
        self._groups = GroupLimits(untidy.limits) if untidy is not None else None
        self._outcomes: list[tuple[str, int]] = []  # (path, retCode) of every judged request, in order
        self._keys: dict[str, str] = {}
        self._faults: list[tuple[str, str | None]] = []  # (fault, the only path it meets, if any)
        self._log: list[LoggedRequest] = []
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (window end ms, calls in it)
        self._slow: list[threading.Event] = []
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-bybit", daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    # ---- test controls ----

    def add_key(self, api_key: str, api_secret: str) -> None:
        with self._lock:
            self._keys[api_key] = api_secret

    def set_ticker(self, symbol: str, price: float) -> None:
        with self._lock:
            self._exchange.prices[symbol] = price

    def set_balance(self, coin: str, amount: float) -> None:
        with self._lock:
            self._exchange.wallet[coin] = amount

    def set_position(self, category: str, symbol: str, size: float) -> None:
        """The account's position in ``symbol`` (signed: negative is short)."""
        with self._lock:
            self._exchange.positions[(category, symbol)] = size

    def fill(self, link_id: str, qty: float) -> None:
        """Execute ``qty`` more of the open order ``link_id`` (a part leaves it PartiallyFilled)."""
        with self._lock:
            order = self._exchange.find(link_id=link_id)
            if order is None or order["orderStatus"] not in OPEN:
                raise ValueError(f"no open order {link_id!r}")
            self._exchange.fill(order, qty)

    def inject(self, fault: str, count: int = 1, path: str | None = None) -> None:
        """The next ``count`` requests (to ``path`` only, when given) meet ``fault``."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(FAULTS)}")
        with self._lock:
            self._faults.extend([(fault, path)] * count)

    def release(self) -> None:
        """End every "slow" delay now: those replies go out at once."""
        with self._lock:
            for event in self._slow:
                event.set()

    def _now(self) -> float:
        return time.time() + self.skew_ms / 1000

    def accepted(self, path: str) -> int:
        """How many requests to ``path`` the exchange carried out (retCode 0)."""
        with self._lock:
            return sum(1 for p, code in self._outcomes if p == path and code == 0)

    def orders(self) -> list[Params]:
        """Every order the exchange took, in the order it took them (a copy)."""
        with self._lock:
            return [dict(o) for o in self._exchange.orders.values()]

    def outcomes(self, path: str) -> list[int]:
        """The retCodes given to requests to ``path``, in order."""
        with self._lock:
            return [code for p, code in self._outcomes if p == path]

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def wait_requests(self, count: int, timeout: float = 2.0) -> bool:
        """Wait until at least ``count`` requests have arrived."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._log) >= count, timeout)

    # ---- lifecycle ----

    def __enter__(self) -> FakeBybit:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, end open keep-alive connections and join every thread."""
        if self._thread.is_alive():  # shutdown() waits for serve_forever: it must have started
            self._server.shutdown()
        self.release()
        with self._lock:
            connections = list(self._connections.items())
        for conn, _ in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked reading the next request
            except OSError:
                pass
        for _, thread in connections:
            thread.join(timeout=2.0)
        self._server.server_close()
        self._thread.join(timeout=2.0)

    def _track(self, conn: socket.socket, on: bool) -> None:
        with self._lock:
            if on:
                self._connections[conn] = threading.current_thread()
            else:
                self._connections.pop(conn, None)

    # ---- one request ----

    def respond(self, method: str, raw_path: str, headers: Message, body: bytes) -> _Reply | None:
        """The reply to one request; None: drop the connection without one."""
        split = urlsplit(raw_path)
        route = ROUTES.get((method, split.path))
        payload = split.query if method == "GET" else body.decode("utf-8", "replace")
        params = self._params(method, payload)
        api_key = headers.get("X-BAPI-API-KEY")
        with self._lock:
            fault = self._next_fault(split.path)
            verified = route is not None and route.auth and self._auth(headers, payload) == (0, "")
            window = headers.get("X-BAPI-RECV-WINDOW")
            self._log.append(LoggedRequest(method, split.path, params or {}, api_key, verified, fault,
                                           int(window) if window and window.isdigit() else None, time.monotonic()))
            self._lock.notify_all()
            slow = threading.Event() if fault in ("slow", "hold") else None
            if slow is not None:
                self._slow.append(slow)
        if slow is not None:
            slow.wait(self.hold_delay if fault == "hold" else self.slow_delay)
        elif fault is not None and fault != "ack_lost":
            return self._fault(fault, api_key)
        with self._lock:
            if route is None:
                return self._reply(404, b"", api_key)
            turn = self._groups.take(api_key or "", split.path, ms(time.time)) if self._groups and api_key else None
            if turn is not None and turn.refused:
                code, msg, result = 10006, "Too many visits!", {}
            else:
                code, msg, result = self._outcome(route, headers, payload, params)
            self._outcomes.append((split.path, code))
            reply = self._envelope(code, msg, result, api_key)
            reply.headers.update(turn.headers if turn is not None else {})
            return None if fault == "ack_lost" else reply

    def _next_fault(self, path: str) -> str | None:
        """The fault the next request to ``path`` meets (taken off the queue); the caller holds the lock."""
        for i, (fault, only) in enumerate(self._faults):
            if only is None or only == path:
                del self._faults[i]
                return fault
        return None

    def _outcome(self, route: Route, headers: Message, payload: str, params: Params | None) -> Outcome:
        if params is None:
            return 10001, "params error: body is not JSON", {}
        if route.auth:
            code, msg = self._auth(headers, payload)
            if code:
                return code, msg, {}
        for group in route.required:
            if not any(params.get(name) not in (None, "") for name in group):
                return 10001, f"params error: {' or '.join(group)} is required", {}
        handler: Callable[[Params], Outcome] = getattr(self._exchange, route.handler)
        return handler(params)

    @staticmethod
    def _params(method: str, payload: str) -> Params | None:
        if method == "GET":
            return dict(parse_qsl(payload, keep_blank_values=True))
        try:
            params = json.loads(payload or "{}")
        except ValueError:
            return None
        return params if isinstance(params, dict) else None

    def _auth(self, headers: Message, payload: str) -> tuple[int, str]:
        """Bybit's checks, in its order; (0, "") when the request is properly signed."""
        api_key = headers.get("X-BAPI-API-KEY") or ""
        secret = self._keys.get(api_key)
        if secret is None:
            return 10003, "API key is invalid."
        try:
            stamp = int(headers.get("X-BAPI-TIMESTAMP", ""))
            window = int(headers.get("X-BAPI-RECV-WINDOW", "5000"))
        except ValueError:
            return 10001, "params error: timestamp or recv_window invalid"
        now = ms(self._now)
        if not now - window <= stamp < now + 1000:  # Bybit's rule, judged when the request is handled
            return 10002, f"invalid request, please check your server timestamp or recv_window param. server_timestamp[{now}]"
        signed = f"{stamp}{api_key}{window}{payload}"
        expected = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers.get("X-BAPI-SIGN", "")):
            return 10004, "error sign! origin_string[...]"
        return 0, ""

    def _fault(self, fault: str, api_key: str | None) -> _Reply | None:
        if fault == "drop":
            return None
        with self._lock:
            if fault == "http_500":
                return self._reply(500, b"Internal Server Error", api_key)
            if fault == "http_403":
                return self._reply(403, b"Forbidden", api_key)
            if fault == "garbage":
                return self._reply(200, b"<html>upstream gateway says hello</html>", api_key)
            if fault == "bad_key":
                return self._envelope(10003, "API key is invalid.", {}, api_key)
            reply = self._envelope(10006, "Too many visits!", {}, api_key)
        reply.headers["X-Bapi-Limit-Status"] = "0"
        reply.headers["X-Bapi-Limit-Reset-Timestamp"] = str(ms(time.time) + int(self.rate_limit_reset * 1000))
        return reply

    def _envelope(self, code: int, msg: str, result: Any, api_key: str | None) -> _Reply:
        ext: dict[str, Any] = {"list": result.codes} if isinstance(result, Batched) else {}
        result = result.result if isinstance(result, Batched) else result
        body = {"retCode": code, "retMsg": msg, "result": result, "retExtInfo": ext, "time": ms(time.time)}
        return self._reply(200, json.dumps(body).encode(), api_key)

    def _reply(self, status: int, body: bytes, api_key: str | None) -> _Reply:
        """Every reply carries the limit headers, as Bybit's do; the caller holds the lock."""
        headers = {"Content-Type": "application/json", **self._limit_headers(api_key or "")}
        return _Reply(status, body, headers)

    def _limit_headers(self, api_key: str) -> dict[str, str]:
        now = ms(time.time)
        end, calls = self._windows.get(api_key, (0, 0))
        if now >= end:
            end, calls = now + 1000, 0
        self._windows[api_key] = (end, calls + 1)
        remaining = max(0, self.limit - calls - 1)
        return {"X-Bapi-Limit": str(self.limit), "X-Bapi-Limit-Status": str(remaining),
                "X-Bapi-Limit-Reset-Timestamp": str(end)}


class _Server(ThreadingHTTPServer):
    fake: FakeBybit
    daemon_threads = True  # FakeBybit.close joins them itself, after ending their connections


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as pybit's requests session expects
    server: _Server
    timeout = 30  # an idle keep-alive connection left open by a client ends on its own
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, False)

    def do_GET(self) -> None:
        self._serve("GET", b"")

    def do_POST(self) -> None:
        self._serve("POST", self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _serve(self, method: str, body: bytes) -> None:
        try:
            reply = self.server.fake.respond(method, self.path, self.headers, body)
        except Exception as e:  # a bug in the fake must not look like a dropped connection
            reply = _Reply(500, f"fake bybit failed: {e!r}".encode(), {})
        if reply is None:
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:  # the client gave up (a timeout) before the reply went out
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


def fake_bybit() -> Iterator[FakeBybit]:
    """Body of a pytest fixture: ``fake = pytest.fixture(fake_bybit)``."""
    with FakeBybit() as fake:
        yield fake


def keyed_fake(key: str, secret: str, tickers: dict[str, float] | None = None,
               untidy: Untidy | None = None) -> Iterator[FakeBybit]:
    """Body of a pytest fixture: a fake that knows one key (``yield from keyed_fake(KEY, SECRET)``)."""
    with FakeBybit(untidy=untidy) as fake:
        fake.add_key(key, secret)
        for symbol, price in (tickers or {}).items():
            fake.set_ticker(symbol, price)
        yield fake

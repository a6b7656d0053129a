"""A TCP proxy for tests that can stop forwarding without closing anything.

``blackhole()`` models a network that silently drops packets: every
connection stays open and every byte sent is accepted by the proxy's own
socket, but nothing reaches the other side. Unlike a closed port or a killed
backend, the client gets no error and its kernel no reset: only a timeout of
its own can tell it that the server went quiet. ``cut()`` models a server
that is down instead: every connection is closed, and each new one as soon as
it is accepted, so every call fails at once. ``restore()`` forwards again
(the bytes held meanwhile are dropped, as a real network would have).

One thread runs a selector over the listening socket and every pair.
"""

from __future__ import annotations

import selectors
import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._forwarding = True
        self._refusing = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcpproxy", daemon=True)
        self._thread.start()

    def url(self, url: str) -> str:
        """``url`` (postgresql://USER@HOST:PORT/DB) pointed at this proxy instead."""
        scheme, rest = url.split("://", 1)
        user, _, hostpath = rest.rpartition("@")
        path = hostpath.split("/", 1)[1]
        return f"{scheme}://{user + '@' if user else ''}127.0.0.1:{self.port}/{path}"

    def blackhole(self) -> None:
        self._forwarding = False

    def cut(self) -> None:
        self._refusing = True

    def restore(self) -> None:
        self._refusing = False
        self._forwarding = True

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        for sock in [self._listener, *self._peers]:
            sock.close()
        self._selector.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            for sock in [s for s in self._peers if self._refusing]:  # on this thread: it owns the sockets
                if sock in self._peers:
                    self._drop(sock, self._peers[sock])
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._pump(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._refusing:
            client.close()
            return
        # While blackholed, a new connection is accepted and then hears nothing, like the old ones:
        # its "server" side is a socket connected to nothing, never read.
        forwarding = self._forwarding
        server = socket.create_connection(self.target, timeout=5) if forwarding else socket.socket()
        for sock in (client, server):
            sock.setblocking(False)
        self._peers[client], self._peers[server] = server, client
        self._selector.register(client, selectors.EVENT_READ)
        if forwarding:
            self._selector.register(server, selectors.EVENT_READ)

    def _pump(self, sock: socket.socket) -> None:
        peer = self._peers.get(sock)
        if peer is None:  # dropped with its peer earlier in this same round of events
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock, peer)
            return
        if self._forwarding:
            try:
                peer.sendall(data)  # small, local: the peer's buffer takes it
            except OSError:
                self._drop(sock, peer)

    def _drop(self, sock: socket.socket, peer: socket.socket) -> None:
        for s in (sock, peer):
            self._peers.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

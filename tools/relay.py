"""A loopback relay to a store, for tests and benchmarks that need a slow or silent store.

It passes every byte on, after ``delay`` seconds on the store's side (a store that is slow but
answers), or nothing at all once ``silent`` is set (a store behind a broken network). Only
loopback addresses are ever relayed to.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Relay:
    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.target, self.delay = port, delay
        self.silent = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self.sockets += [client, upstream]
            threading.Thread(target=self._relay, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._relay, args=(upstream, client, self.delay), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                time.sleep(delay)
                if not self.silent.is_set():
                    sink.sendall(data)

    def close(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

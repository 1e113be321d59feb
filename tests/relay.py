"""A TCP relay for tests: connections cut midway, slow links, a host cut off."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class CuttingRelay:
    """Relays TCP connections to ``target``; the first is reset once ``cut_after`` bytes came
    back from the server (a connection lost midway), the later ones run to their end. With
    ``rate``, what comes back is relayed at that many bytes a second (a slow link). :meth:`cut`
    ends every connection and refuses new ones, as for a host whose network to the target
    failed while the target stays up for the others."""

    def __init__(self, target: tuple[str, int], cut_after: int | None = None, rate: float | None = None):
        self.target, self.cut_after, self.rate = target, cut_after, rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.back = 0  # bytes relayed from the server, over every connection
        self.cut_off, self.sockets = False, []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            self.connections += 1
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            cut = self.cut_after if self.connections == 1 else None
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, cut, self.rate), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cut: int | None, rate: float | None = None) -> None:
        sent = 0
        try:
            while data := src.recv(16384 if rate else 65536):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
                if cut is not None:
                    self.back += len(data)
                    sent += len(data)
                    if sent >= cut:  # both sides cut at once (shutdown: whatever the other pump blocks on)
                        for s in (src, dst):
                            with contextlib.suppress(OSError):
                                s.shutdown(socket.SHUT_RDWR)
                            s.close()
                        return
        except OSError:
            return

    def cut(self) -> None:
        self.cut_off = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()

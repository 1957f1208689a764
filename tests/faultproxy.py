"""A TCP proxy on loopback that can take a server away, for outage tests.

    p = FaultProxy(("127.0.0.1", 993)); p.start()
    ... connect to 127.0.0.1:p.port ...
    p.down()    # every connection reset, new ones refused (the server is down)
    p.stall()   # bytes stop flowing both ways, connections stay open (a dead link:
                # only the client's own timeouts end it); new ones are accepted and stall
    p.up()      # back to forwarding (stalled connections are cut: their streams are
                # incomplete, a client must reconnect)
    p.stop()

TLS passes through untouched, so a certificate for 127.0.0.1 still verifies.
"""
import select
import socket
import struct
import threading

__all__ = ["FaultProxy"]


def _reset(sock):
    """Close with RST rather than FIN, as a dead server's host would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class FaultProxy:
    def __init__(self, target, host="127.0.0.1"):
        self.target = target
        self.host = host
        self.port = 0
        self.lsock = self._listen()
        self.port = self.lsock.getsockname()[1]
        self.mode = "up"
        self.lock = threading.Lock()
        self.pairs = []        # [client, server] sockets being forwarded
        self.accepted = 0      # connections accepted in any mode
        self._stopping = False
        self._thread = None

    def _listen(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        ls.listen(64)
        return ls

    def start(self):
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self):
        while not self._stopping:
            with self.lock:
                ls = self.lsock
            if ls is None:   # down: nothing listens, connect() is refused
                select.select([], [], [], 0.05)
                continue
            try:
                r, _, _ = select.select([ls], [], [], 0.1)
                if not r:
                    continue
                c, _ = ls.accept()
            except OSError:
                continue
            with self.lock:
                self.accepted += 1
                mode = self.mode
            if mode == "down":
                _reset(c)
                continue
            try:
                s = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(c)
                continue
            pair = [c, s]
            with self.lock:
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair):
        c, s = pair
        peer = {c: s, s: c}
        try:
            while not self._stopping:
                with self.lock:
                    mode = self.mode
                    alive = pair in self.pairs
                if not alive:
                    return
                if mode == "stall":
                    # Read nothing, send nothing: the kernel buffers fill and stop.
                    select.select([], [], [], 0.1)
                    continue
                r, _, _ = select.select([c, s], [], [], 0.1)
                for sock in r:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peer[sock].sendall(data)
        except OSError:
            return
        finally:
            with self.lock:
                if pair in self.pairs:
                    self.pairs.remove(pair)
            _reset(c)
            _reset(s)

    def _cut_all(self):
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for c, s in pairs:
            _reset(c)
            _reset(s)

    def down(self):
        with self.lock:
            self.mode = "down"
            ls, self.lsock = self.lsock, None
        if ls is not None:
            ls.close()
        self._cut_all()

    def stall(self):
        with self.lock:
            self.mode = "stall"

    def up(self):
        with self.lock:
            was = self.mode
            self.mode = "up"
            if self.lsock is None:
                self.lsock = self._listen()
        if was == "stall":
            self._cut_all()

    def stop(self):
        self._stopping = True
        with self.lock:
            ls, self.lsock = self.lsock, None
        if ls is not None:
            ls.close()
        self._cut_all()

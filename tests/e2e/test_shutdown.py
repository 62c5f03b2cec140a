"""A stop is bounded even when the source is unreachable (the disaster this
agent exists for): SIGTERM while the leader's task workers probe a source that
accepts connections and never answers."""

import signal
import socket
import threading
import time

from conftest import create_body, free_port


class SilentServer:
    """Accepts TCP connections and never sends a byte."""

    def __init__(self):
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(128)
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_sigterm_stops_cleanly_and_quickly_with_a_silent_source(agents):
    silent = SilentServer()
    try:
        a = agents(extra_env={
            "MILVUS_CDC_SOURCE__MQ_TYPE": "natsmq",
            "MILVUS_CDC_SOURCE__NATS_URL": f"nats://127.0.0.1:{silent.port}",
            "MILVUS_CDC_SOURCE__CONNECT_TIMEOUT": '"5s"',
            "MILVUS_CDC_SERVER__SHUTDOWN_TIMEOUT": '"6s"',
        }).start()
        status, body = a.cdc(create_body())
        assert status == 200, body
        time.sleep(3)  # the task's workers are probing the 17 silent channels
        t0 = time.time()
        a.proc.send_signal(signal.SIGTERM)
        rc = a.proc.wait(timeout=30)
        took = time.time() - t0
        # Clean (status 0) and well before the deadline: the probes observe
        # the stop; the deadline (status 1) is only the backstop.
        assert rc == 0, (rc, a.log_tail())
        assert took < 4, (took, a.log_tail())
    finally:
        silent.close()

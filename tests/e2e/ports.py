"""Free ports for the servers tests start, chosen below Linux's ephemeral
range (32768-60999), where outgoing connections take ports at random."""

import random
import socket


def free_port_in(low, high, avoid=()):
    """A port in [low, high) that nothing listens on now (bound with
    SO_REUSEADDR, as the servers do)."""
    rng = random.Random()
    for _ in range(500):
        p = rng.randrange(low, high)
        if p in avoid:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p
    raise RuntimeError(f"no free port in {low}-{high}")

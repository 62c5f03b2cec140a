"""Free ports for the servers tests start, chosen below Linux's ephemeral
range (32768-60999), where outgoing connections take ports at random."""

import random
import socket

# Every port handed out in this process. A server may be given its port well
# before it binds it (or bind it again after a restart), and a port freed by a
# stopped server may still be in use for a moment: so a port goes to one
# caller only, and "nothing listens on it now" is not the only test.
_HANDED_OUT = set()


def _bindable(p):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            return False
        return True


def free_block_in(low, high, span):
    """The first port of `span` consecutive ports in [low, high) that are all
    free now and handed out to nobody else (a server that takes a port range)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high - span + 1)
        block = range(base, base + span)
        if any(p in _HANDED_OUT for p in block) or not all(_bindable(p) for p in block):
            continue
        _HANDED_OUT.update(block)
        return base
    raise RuntimeError(f"no free block of {span} ports in {low}-{high}")


def free_port_in(low, high, avoid=()):
    """A port in [low, high) that nothing listens on now (bound with
    SO_REUSEADDR, as the servers do) and that no earlier call returned."""
    rng = random.Random()
    for _ in range(500):
        p = rng.randrange(low, high)
        if p in avoid or p in _HANDED_OUT:
            continue
        if _bindable(p):
            _HANDED_OUT.add(p)
            return p
    raise RuntimeError(f"no free port in {low}-{high}")

"""A loopback TCP proxy that can delay every byte by a configurable time.

The agents reach their etcd through it, so the chaos suite can add network
delay between them without root, network namespaces or the kernel's netem
(which this machine's kernel does not have; see docs/reliability.md).

    python delayproxy.py --listen 127.0.0.1:P --upstream 127.0.0.1:Q --control FILE

FILE holds the one-way delay in milliseconds (missing or empty: 0); it is
re-read every 50 ms. Each direction of each connection is a FIFO: a chunk
read at time t is written at t + delay (the delay in force when it was read),
never before an earlier chunk, so the byte order is kept. When either side
closes, both are closed.
"""

import argparse
import asyncio
import os
import signal
import sys
import time

DELAY = [0.0]


def parse_addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


async def watch_control(path):
    while True:
        try:
            with open(path) as f:
                text = f.read().strip()
            DELAY[0] = max(0.0, float(text) / 1000.0) if text else 0.0
        except FileNotFoundError:
            DELAY[0] = 0.0
        except (OSError, ValueError):
            pass
        await asyncio.sleep(0.05)


async def pump(reader, writer, done):
    """Copies reader to writer, holding each chunk for the current delay."""
    queue = asyncio.Queue()

    async def deliver():
        try:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            done.set()

    sender = asyncio.ensure_future(deliver())
    try:
        while not done.is_set():
            data = await reader.read(65536)
            if not data:
                break
            await queue.put((time.monotonic() + DELAY[0], data))
    except (OSError, ConnectionError):
        pass
    finally:
        await queue.put((0.0, None))
        try:
            await sender
        except asyncio.CancelledError:
            pass
        done.set()


async def handle(client_reader, client_writer, upstream):
    try:
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(*upstream), timeout=5)
    except (OSError, asyncio.TimeoutError):
        client_writer.close()
        return
    done = asyncio.Event()
    tasks = [asyncio.ensure_future(pump(client_reader, up_writer, done)),
             asyncio.ensure_future(pump(up_reader, client_writer, done))]
    await done.wait()
    for w in (client_writer, up_writer):
        try:
            w.close()
        except OSError:
            pass
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--control", required=True)
    args = ap.parse_args()
    upstream = parse_addr(args.upstream)
    host, port = parse_addr(args.listen)
    server = await asyncio.start_server(lambda r, w: handle(r, w, upstream), host, port,
                                        reuse_address=True)
    asyncio.ensure_future(watch_control(args.control))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"delayproxy {args.listen} -> {args.upstream} (pid {os.getpid()})", flush=True)
    async with server:
        await stop.wait()
    sys.exit(0)


if __name__ == "__main__":
    asyncio.run(main())

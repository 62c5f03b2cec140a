#!/usr/bin/env python3
"""Protocol shim of the Pulsar TEST stack: makes pulsar-lite behave like Apache Pulsar.

TEST FIXTURE ONLY. The Pulsar test stack (scripts/stack.sh with
CDC_SOURCE_MQ=pulsar) runs pulsar-lite 0.2.0, a small Pulsar-compatible broker
from PyPI, instead of Apache Pulsar. pulsar-lite differs from Apache Pulsar on
three points that matter to Milvus 2.3.5 (pulsar-client-go v0.6.10) and to the
agent's reader (pulsar-rs). This shim sits between the clients and pulsar-lite
and makes the TEST broker behave like Apache Pulsar on exactly these three
points, and on nothing else:

1. Checksums. Apache Pulsar sends every MESSAGE frame with the optional
   [magic 0x0e01][CRC32C] header; pulsar-lite sends it without. Both
   pulsar-client-go (ErrCorruptedMessage, "Discarding corrupted message") and
   pulsar-rs (which always parses magic + checksum) need it. The shim adds it.
2. Seek. After a successful SEEK, Apache Pulsar disconnects the subscription's
   consumer (CLOSE_CONSUMER) and the client subscribes again from the new
   position; pulsar-client-go's Seek waits for that reconnect, so on
   pulsar-lite it hangs. The shim closes the consumer on both sides after
   pulsar-lite's SUCCESS, and until the client subscribes again it drops that
   consumer's FLOW/ACK/REDELIVER frames and answers its CLOSE_CONSUMER itself
   (Apache Pulsar answers both for a closed consumer without error;
   pulsar-lite would close the whole connection: "Unknown consumer ID").
3. Lookups. pulsar-lite's LOOKUP_RESPONSE names its own listen address; the
   shim sets proxy_through_service_url=true, as a Pulsar proxy does, so that
   clients keep talking to the address they were given (the shim).

A consequence of the same difference as in point 2, for consumers closed by
the client itself: a FLOW, ACK or REDELIVER that crosses a consumer's close
(the client sent it before it learnt that the consumer is gone) is ignored by
Apache Pulsar (ServerCnx finds no consumer and logs it); pulsar-lite closes the
whole connection ("Unknown consumer ID"), failing every other consumer on it.
The shim keeps the set of consumers open on the broker (a SUBSCRIBE answered
SUCCESS, until a CLOSE_CONSUMER from either side) and drops those frames for
any other consumer.

The agent never relies on anything else of this shim or of pulsar-lite: what
it reads through the shim is what an Apache Pulsar broker would send.

Two optional broker settings of Apache Pulsar, emulated for fault tests
(off by default; the stack's own shim, which Milvus uses, runs without them;
a test starts a second shim in front of the same pulsar-lite with them):

- --require-token TOKEN (or --require-token-file FILE): Apache Pulsar with
  authenticationEnabled=true and AuthenticationProviderToken and no
  anonymous role. Every CONNECT must carry auth_method_name "token" and
  auth_data equal to TOKEN; any other CONNECT (no credentials, another
  method, another token) is answered as ServerCnx.handleConnect answers a
  failed authentication, ERROR(request_id -1, AuthenticationError,
  "Unable to authenticate"), and the connection is closed. (Apache Pulsar
  checks the JWT's signature and subject; the shim compares the bytes, which
  is the same verdict for a token that is or is not the one issued.) A valid
  CONNECT goes on to pulsar-lite unchanged. The token is never printed.
- --tls-cert FILE --tls-key FILE: the listener speaks TLS (Apache Pulsar's
  brokerServicePortTls), and each LOOKUP_RESPONSE also carries
  brokerServiceUrlTls (pulsar+ssl://LISTEN), as a TLS-enabled broker's
  does (pulsar-rs takes the lookup URL of its service URL's scheme).

Everything else passes through byte for byte. One upstream connection per
client connection. Counters are printed every 30 s and at exit.

usage: pulsar_shim.py --listen 127.0.0.1:PORT --broker 127.0.0.1:PORT
           [--require-token TOKEN | --require-token-file FILE]
           [--tls-cert PEM --tls-key PEM]
       pulsar_shim.py --self-test
"""

import argparse
import asyncio
import signal
import ssl
import struct
import sys

import crc32c  # PyPI crc32c, in the shim's venv (scripts/setup.sh: <venv>/pulsar/venv)

# BaseCommand.Type values. For each command, BaseCommand's field number equals its type.
CONNECT, SUBSCRIBE, MESSAGE, ACK, FLOW = 2, 4, 9, 10, 11
SUCCESS, ERROR, CLOSE_CONSUMER = 13, 14, 16
REDELIVER_UNACKNOWLEDGED, LOOKUP_RESPONSE, SEEK = 20, 24, 28
# CommandLookupTopicResponse.brokerServiceUrlTls and .proxy_through_service_url
BROKER_SERVICE_URL_TLS, PROXY_THROUGH_SERVICE_URL = 2, 8
# CommandConnect.auth_data and .auth_method_name
AUTH_DATA, AUTH_METHOD_NAME = 3, 5
# ServerError.AuthenticationError
AUTHENTICATION_ERROR = 3
CHECKSUM_MAGIC = 0x0E01
BROKER_ENTRY_METADATA_MAGIC = 0x0E02

STATS = {"connections": 0, "frames": 0, "checksums_added": 0, "lookups_rewritten": 0,
         "seeks_closed": 0, "dropped_for_closed_consumer": 0, "close_answered": 0,
         "dropped_for_unknown_consumer": 0,
         "auth_refused": 0}

# The optional Apache Pulsar settings of this run (see the docstring).
OPTIONS = {"token": None, "tls_url": None}


def log(msg):
    print(f"pulsar_shim: {msg}", flush=True)


# ------------------------------------------------------------ protobuf wire

def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(buf, i):
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def fields(buf):
    """[(field number, wire type, raw bytes of the whole field, value)] of a message."""
    i, out = 0, []
    while i < len(buf):
        start = i
        key, i = read_varint(buf, i)
        no, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            n, i = read_varint(buf, i)
            v = bytes(buf[i:i + n])
            i += n
        elif wt == 1:
            v, i = bytes(buf[i:i + 8]), i + 8
        elif wt == 5:
            v, i = bytes(buf[i:i + 4]), i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        out.append((no, wt, bytes(buf[start:i]), v))
    return out


def command_type(cmd):
    """BaseCommand.type (field 1, written first by every client and broker)."""
    if not cmd or cmd[0] != 0x08:
        return None
    return read_varint(cmd, 1)[0]


def sub_command(cmd, field_no):
    """{field number: value} of BaseCommand's sub-command field_no."""
    for no, wt, _raw, v in fields(cmd):
        if no == field_no and wt == 2:
            return {n: val for n, _w, _r, val in fields(v)}
    return {}


def frame_of(cmd, rest=b""):
    """A whole frame: TOTAL_SIZE, CMD_SIZE, command, then headers and payload."""
    return struct.pack(">II", 4 + len(cmd) + len(rest), len(cmd)) + cmd + rest


def close_consumer_cmd(consumer_id, request_id):
    sub = varint(1 << 3) + varint(consumer_id) + varint(2 << 3) + varint(request_id)
    return varint(1 << 3) + varint(CLOSE_CONSUMER) + varint((CLOSE_CONSUMER << 3) | 2) \
        + varint(len(sub)) + sub


def error_cmd(request_id, error, message):
    """CommandError (request_id is a uint64: -1 travels as 2^64 - 1)."""
    text = message.encode()
    sub = varint(1 << 3) + varint(request_id) + varint(2 << 3) + varint(error) \
        + varint((3 << 3) | 2) + varint(len(text)) + text
    return varint(1 << 3) + varint(ERROR) + varint((ERROR << 3) | 2) + varint(len(sub)) + sub


def success_cmd(request_id):
    sub = varint(1 << 3) + varint(request_id)
    return varint(1 << 3) + varint(SUCCESS) + varint((SUCCESS << 3) | 2) + varint(len(sub)) + sub


# ------------------------------------------------------------ the three points

def add_checksum(rest):
    """Point 1: headers-and-payload of a MESSAGE with Apache Pulsar's magic + CRC32C."""
    if not rest or struct.unpack_from(">H", rest, 0)[0] in (CHECKSUM_MAGIC,
                                                            BROKER_ENTRY_METADATA_MAGIC):
        return rest
    STATS["checksums_added"] += 1
    return struct.pack(">HI", CHECKSUM_MAGIC, crc32c.crc32c(rest)) + rest


def proxy_through_service_url(cmd, tls_url=None):
    """Point 3: a LOOKUP_RESPONSE command with proxy_through_service_url = true
    (and with --tls-*, brokerServiceUrlTls = tls_url)."""
    out = bytearray()
    replaced = {PROXY_THROUGH_SERVICE_URL} | ({BROKER_SERVICE_URL_TLS} if tls_url else set())
    for no, wt, raw, v in fields(cmd):
        if no == LOOKUP_RESPONSE and wt == 2:
            sub = b"".join(r for n, _w, r, _v in fields(v) if n not in replaced)
            sub += varint(PROXY_THROUGH_SERVICE_URL << 3) + varint(1)
            if tls_url:
                url = tls_url.encode()
                sub += varint((BROKER_SERVICE_URL_TLS << 3) | 2) + varint(len(url)) + url
            out += varint((LOOKUP_RESPONSE << 3) | 2) + varint(len(sub)) + sub
        else:
            out += raw
    STATS["lookups_rewritten"] += 1
    return bytes(out)


class Connection:
    """Point 2's state for one client connection."""

    def __init__(self):
        self.seeks = {}          # request id of a client SEEK -> its consumer id
        self.own_requests = set()  # request ids of the CLOSE_CONSUMERs the shim sent upstream
        self.next_request_id = 1 << 62  # far from any client's request ids
        self.closed = set()      # consumers the shim closed, not subscribed again yet
        self.subscribing = {}    # request id of a client SUBSCRIBE -> its consumer id
        self.open = set()        # consumers open on the broker


async def read_frame(reader):
    """(command, headers-and-payload) of the next frame."""
    total = struct.unpack(">I", await reader.readexactly(4))[0]
    body = await reader.readexactly(total)
    cmd_size = struct.unpack_from(">I", body, 0)[0]
    return body[4:4 + cmd_size], body[4 + cmd_size:]


def authenticated(cmd):
    """--require-token: whether a CONNECT carries the expected token."""
    connect = sub_command(cmd, CONNECT)
    return (connect.get(AUTH_METHOD_NAME) == b"token"
            and connect.get(AUTH_DATA) == OPTIONS["token"])


async def client_to_broker(reader, client, broker, conn):
    try:
        while True:
            cmd, rest = await read_frame(reader)
            STATS["frames"] += 1
            typ = command_type(cmd)
            if typ == CONNECT and OPTIONS["token"] is not None and not authenticated(cmd):
                # As Apache Pulsar's ServerCnx: ERROR(-1, AuthenticationError), close.
                STATS["auth_refused"] += 1
                client.write(frame_of(error_cmd((1 << 64) - 1, AUTHENTICATION_ERROR,
                                                "Unable to authenticate")))
                await client.drain()
                break
            if typ == SEEK:
                seek = sub_command(cmd, SEEK)
                conn.seeks[seek.get(2)] = seek.get(1)
            elif typ == SUBSCRIBE:
                sub = sub_command(cmd, SUBSCRIBE)
                conn.closed.discard(sub.get(4))
                conn.subscribing[sub.get(5)] = sub.get(4)
            elif typ in (ACK, FLOW, REDELIVER_UNACKNOWLEDGED):
                consumer_id = sub_command(cmd, typ).get(1)
                if consumer_id in conn.closed:
                    STATS["dropped_for_closed_consumer"] += 1
                    continue
                if consumer_id not in conn.open:
                    STATS["dropped_for_unknown_consumer"] += 1
                    continue
            elif typ == CLOSE_CONSUMER:
                close = sub_command(cmd, CLOSE_CONSUMER)
                conn.open.discard(close.get(1))
                if close.get(1) in conn.closed:
                    conn.closed.discard(close.get(1))
                    STATS["close_answered"] += 1
                    client.write(frame_of(success_cmd(close.get(2, 0))))
                    await client.drain()
                    continue
            broker.write(frame_of(cmd, rest))
            await broker.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        broker.close()


async def broker_to_client(reader, client, broker, conn):
    try:
        while True:
            cmd, rest = await read_frame(reader)
            STATS["frames"] += 1
            typ = command_type(cmd)
            if typ == MESSAGE:
                rest = add_checksum(rest)
            elif typ == LOOKUP_RESPONSE:
                cmd = proxy_through_service_url(cmd, OPTIONS["tls_url"])
            elif typ == CLOSE_CONSUMER:  # the broker closed it
                conn.open.discard(sub_command(cmd, CLOSE_CONSUMER).get(1))
            elif typ in (SUCCESS, ERROR):
                request_id = sub_command(cmd, typ).get(1)
                if request_id in conn.own_requests:  # the answer to the shim's own close
                    conn.own_requests.discard(request_id)
                    continue
                subscribed = conn.subscribing.pop(request_id, None)
                if typ == SUCCESS and subscribed is not None:
                    conn.open.add(subscribed)
                consumer_id = conn.seeks.pop(request_id, None)
                client.write(frame_of(cmd, rest))
                if typ == SUCCESS and consumer_id is not None:
                    conn.open.discard(consumer_id)
                    conn.next_request_id += 1
                    conn.own_requests.add(conn.next_request_id)
                    conn.closed.add(consumer_id)
                    broker.write(frame_of(close_consumer_cmd(consumer_id, conn.next_request_id)))
                    client.write(frame_of(close_consumer_cmd(consumer_id, 0)))
                    STATS["seeks_closed"] += 1
                await client.drain()
                continue
            client.write(frame_of(cmd, rest))
            await client.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        client.close()


async def handle(client_reader, client_writer, broker_addr):
    STATS["connections"] += 1
    host, port = broker_addr
    try:
        broker_reader, broker_writer = await asyncio.open_connection(host, port)
    except OSError as e:
        log(f"cannot reach the broker at {host}:{port}: {e}")
        client_writer.close()
        return
    conn = Connection()
    await asyncio.gather(
        client_to_broker(client_reader, client_writer, broker_writer, conn),
        broker_to_client(broker_reader, client_writer, broker_writer, conn))


def host_port(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def serve(listen, broker, tls=None):
    server = await asyncio.start_server(lambda r, w: handle(r, w, broker), *listen, ssl=tls)
    extras = (" (TLS)" if tls else "") + (" (token required)" if OPTIONS["token"] else "")
    log(f"listening on {listen[0]}:{listen[1]}{extras}, broker {broker[0]}:{broker[1]}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def report():
        while True:
            await asyncio.sleep(30)
            log(f"stats {STATS}")

    reporter = asyncio.ensure_future(report())
    async with server:
        await stop.wait()
    reporter.cancel()
    log(f"stopping; stats {STATS}")


def self_test():
    """The three rewrites on hand-made frames (no network)."""
    assert crc32c.crc32c(b"123456789") == 0xE3069283
    rest = b"\x00\x00\x00\x02ab" + b"payload"
    fixed = add_checksum(rest)
    assert fixed[:2] == b"\x0e\x01" and fixed[6:] == rest
    assert struct.unpack(">I", fixed[2:6])[0] == crc32c.crc32c(rest)
    assert add_checksum(fixed) == fixed
    url = b"pulsar://127.0.0.1:6650"
    lookup_sub = varint((1 << 3) | 2) + varint(len(url)) + url \
        + varint(3 << 3) + varint(1) + varint(4 << 3) + varint(7)
    lookup = varint(1 << 3) + varint(LOOKUP_RESPONSE) + varint((LOOKUP_RESPONSE << 3) | 2) \
        + varint(len(lookup_sub)) + lookup_sub
    rewritten = sub_command(proxy_through_service_url(lookup), LOOKUP_RESPONSE)
    assert rewritten[PROXY_THROUGH_SERVICE_URL] == 1 and rewritten[4] == 7, rewritten
    close = close_consumer_cmd(5, 1 << 62)
    assert command_type(close) == CLOSE_CONSUMER
    assert sub_command(close, CLOSE_CONSUMER) == {1: 5, 2: 1 << 62}
    assert sub_command(success_cmd(9), SUCCESS) == {1: 9}
    tls = sub_command(proxy_through_service_url(lookup, "pulsar+ssl://h:1"), LOOKUP_RESPONSE)
    assert tls[BROKER_SERVICE_URL_TLS] == b"pulsar+ssl://h:1" and tls[4] == 7, tls
    err = sub_command(error_cmd((1 << 64) - 1, AUTHENTICATION_ERROR, "no"), ERROR)
    assert err == {1: (1 << 64) - 1, 2: AUTHENTICATION_ERROR, 3: b"no"}, err
    OPTIONS["token"] = b"t0k"
    try:
        def connect(method, data):
            sub = varint(1 << 3 | 2) + varint(2) + b"rs" + varint(4 << 3) + varint(12)
            if method is not None:
                sub += varint(AUTH_METHOD_NAME << 3 | 2) + varint(len(method)) + method
            if data is not None:
                sub += varint(AUTH_DATA << 3 | 2) + varint(len(data)) + data
            return varint(1 << 3) + varint(CONNECT) + varint(CONNECT << 3 | 2) \
                + varint(len(sub)) + sub
        assert authenticated(connect(b"token", b"t0k"))
        assert not authenticated(connect(b"token", b"t0K"))
        assert not authenticated(connect(b"basic", b"t0k"))
        assert not authenticated(connect(None, None))
    finally:
        OPTIONS["token"] = None
    print("pulsar_shim: self-test ok")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--listen", type=host_port, help="HOST:PORT the clients connect to")
    ap.add_argument("--broker", type=host_port, help="HOST:PORT of pulsar-lite")
    ap.add_argument("--require-token", help="emulate Apache Pulsar's token authentication: "
                    "refuse every CONNECT without this token")
    ap.add_argument("--require-token-file", help="the same, the token read from a file")
    ap.add_argument("--tls-cert", help="PEM certificate (chain): serve TLS, as "
                    "brokerServicePortTls")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    ap.add_argument("--self-test", action="store_true", help="check the rewrites and exit")
    args = ap.parse_args(argv)
    if args.self_test:
        self_test()
        return 0
    if not args.listen or not args.broker:
        ap.error("--listen and --broker are required")
    if args.require_token is not None and args.require_token_file:
        ap.error("--require-token and --require-token-file exclude each other")
    if args.require_token_file:
        with open(args.require_token_file, "rb") as f:
            OPTIONS["token"] = f.read().strip()
    elif args.require_token is not None:
        OPTIONS["token"] = args.require_token.encode()
    tls = None
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        OPTIONS["tls_url"] = f"pulsar+ssl://{args.listen[0]}:{args.listen[1]}"
    asyncio.run(serve(args.listen, args.broker, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())

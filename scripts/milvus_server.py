#!/usr/bin/env python3
"""Configure one Milvus 2.3.5 standalone instance and exec it in the foreground.

Run with the test venv's python (it needs the PyPI ``milvus`` package, which
bundles the real ``milvus`` binary and its config template).  The launcher

1. checks that every port the instance will listen on is free (clear error
   naming the config key otherwise),
2. renders ``<base-dir>/configs/milvus.yaml`` from the package template with
   ``milvus.MilvusServerConfig`` (ports, external etcd, MQ, auth, extra keys),
3. unpacks the bundled binary into ``<bin-root>/bin`` once (shared by all
   instances, guarded by a file lock), and
4. ``exec``s ``milvus run standalone`` with cwd = base dir.

Because of the exec, the pid of this script *is* the Milvus pid: SIGTERM goes
straight to Milvus (graceful stop), nothing is left in between.  The package's
own ``MilvusServer.stop()`` would SIGKILL Milvus after 1 s, which is why it is
not used here.  Milvus logs go to stdout/stderr (redirect them).

Ports default to the proxy port plus a fixed offset (see PORT_OFFSETS), so two
instances whose proxy ports differ by >= 10 never collide.

Example:
    python milvus_server.py --name source --base-dir .run/stack/source \
        --bin-root .run/stack --proxy-port 19530 \
        --etcd-endpoints 127.0.0.1:2379 --etcd-root-path source \
        --mq natsmq --nats-port 4222

With ``--mq kafka`` (``--kafka-brokers``) or ``--mq pulsar`` (``--pulsar-address``,
``--pulsar-port``, ``--pulsar-webport``, ``--pulsar-tenant``, ``--pulsar-namespace``)
the instance uses that broker instead of its embedded natsmq.
"""

import argparse
import fcntl
import os
import socket
import sys

# config template key (milvus package) -> offset from the proxy port.
# "webservice_port" is not a template key: it is passed to Milvus as the
# METRICS_PORT environment variable and serves /healthz and /metrics.
PORT_OFFSETS = {
    "proxy_port": 0,
    "proxy_internal_port": 1,
    "root_coord_port": 2,
    "query_coord_port": 3,
    "query_node_port": 4,
    "index_coord_port": 5,
    "index_node_port": 6,
    "data_coord_port": 7,
    "data_node_port": 8,
    "webservice_port": 9,
}
PORT_SPAN = max(PORT_OFFSETS.values()) + 1


def die(msg: str) -> None:
    print(f"milvus_server.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def port_free(port: int) -> bool:
    """True if nothing listens on port (Milvus binds the wildcard address)."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET, "127.0.0.1")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--name", required=True, help="instance name (for messages only)")
    p.add_argument("--base-dir", required=True, help="configs/, data/, run/ of this instance")
    p.add_argument("--bin-root", required=True,
                   help="the Milvus binary is unpacked into BIN_ROOT/bin (shared)")
    p.add_argument("--proxy-port", type=int, required=True)
    for key in PORT_OFFSETS:
        if key != "proxy_port":
            p.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                           help=f"default: proxy port + {PORT_OFFSETS[key]}")
    p.add_argument("--etcd-endpoints", required=True, help="e.g. 127.0.0.1:2379")
    p.add_argument("--etcd-root-path", required=True, help="etcd.rootPath (unique per instance)")
    p.add_argument("--mq", choices=["rocksmq", "natsmq", "kafka", "pulsar"], default="rocksmq")
    p.add_argument("--nats-port", type=int, default=4222, help="natsmq.server.port")
    p.add_argument("--kafka-brokers", default="127.0.0.1:9092", help="kafka.brokerList")
    p.add_argument("--rdkafka-dir", default="",
                   help="directory with a librdkafka.so.1 >= 2.2 put first on LD_LIBRARY_PATH "
                        "(Milvus 2.3.5 bundles 1.9.1, which cannot parse newer brokers' replies)")
    p.add_argument("--pulsar-address", default="127.0.0.1",
                   help="pulsar.address (host, or a pulsar:// URL that then wins over the port)")
    p.add_argument("--pulsar-port", type=int, default=6650, help="pulsar.port")
    p.add_argument("--pulsar-webport", type=int, default=8080,
                   help="pulsar.webport (the broker's HTTP port)")
    p.add_argument("--pulsar-tenant", default="public", help="pulsar.tenant")
    p.add_argument("--pulsar-namespace", default="default", help="pulsar.namespace")
    p.add_argument("--auth", action="store_true",
                   help="common.security.authorizationEnabled=true (user root, password Milvus)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any dotted key of the template, e.g. common.ttMsgEnabled=false")
    p.add_argument("--dry-run", action="store_true",
                   help="write the config and print the command, do not exec")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        import milvus  # noqa: PLC0415  (the PyPI package, only in the venv)
    except ImportError:
        die("the 'milvus' package is not importable; run with the test venv python")

    base = os.path.abspath(args.base_dir)
    bin_root = os.path.abspath(args.bin_root)

    ports = {}
    for key, off in PORT_OFFSETS.items():
        val = args.proxy_port if key == "proxy_port" else getattr(args, key)
        ports[key] = val if val is not None else args.proxy_port + off
    if args.mq == "natsmq":
        ports["natsmq.server.port"] = args.nats_port
    seen = {}
    for key, port in ports.items():
        if not 0 < port < 65536:
            die(f"{args.name}: {key}={port} is not a valid port")
        if port in seen:
            die(f"{args.name}: {key} and {seen[port]} both use port {port}")
        seen[port] = key
    busy = [f"{k}={p}" for k, p in ports.items() if not port_free(p)]
    if busy:
        die(f"{args.name}: port(s) already in use: {', '.join(busy)}")

    # --- render the config ------------------------------------------------
    cfg = milvus.MilvusServerConfig(data_dir=base)
    cfg.resolve_storage()  # creates base/{configs,logs,data}, sets storage paths
    for key, port in ports.items():
        if key in cfg.configurable_items:
            cfg.set(key, int(port))
    cfg.set("authorization_enabled", bool(args.auth))
    cfg.set("system_log_path", "")  # log to stdout only; the caller redirects it
    extra = {
        "etcd.use.embed": "false",
        "etcd.endpoints": args.etcd_endpoints,
        "etcd.rootPath": args.etcd_root_path,
        "mq.type": args.mq,
        "natsmq.server.port": str(args.nats_port),
        "natsmq.server.storeDir": os.path.join(base, "data", "nats"),
        "natsmq.server.monitor.logFile": os.path.join(base, "logs", "nats.log"),
        # 2.3.5's default (1800 s) makes a SIGTERM with a loaded collection
        # hang for minutes on Kafka and Pulsar.
        "common.gracefulStopTimeout": "10",
    }
    # advertise loopback in the etcd sessions (default: first unicast address,
    # which breaks a restart when the machine's address changes)
    if args.mq == "pulsar":
        extra.update({
            "pulsar.address": args.pulsar_address,
            "pulsar.port": str(args.pulsar_port),
            "pulsar.webport": str(args.pulsar_webport),
            "pulsar.tenant": args.pulsar_tenant,
            "pulsar.namespace": args.pulsar_namespace,
        })
    for role in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode",
                 "dataCoord", "dataNode"):
        extra[f"{role}.ip"] = "127.0.0.1"
    for item in args.set:
        if "=" not in item:
            die(f"--set expects KEY=VALUE, got {item!r}")
        key, val = item.split("=", 1)
        extra[key.strip()] = val.strip()
    for key, val in extra.items():
        cfg.set(key, val)
    cfg.write_config()

    config_file = os.path.join(base, "configs", "milvus.yaml")
    _check_applied(config_file, extra)
    if args.mq == "kafka":
        _enable_kafka(config_file, args.kafka_brokers)

    # --- unpack the binary once (shared, locked) ---------------------------
    os.makedirs(bin_root, exist_ok=True)
    with open(os.path.join(bin_root, ".bin.lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        milvus._initialize_data_files(bin_root)  # pylint: disable=protected-access
    bin_dir = os.path.join(bin_root, "bin")
    exe = os.path.join(bin_dir, "milvus")

    env = os.environ.copy()
    env.update({
        "DEPLOY_MODE": "STANDALONE",
        "METRICS_PORT": str(ports["webservice_port"]),
        "MILVUS_RUN_DIR": os.path.join(base, "run"),
        "MILVUSCONF": os.path.join(base, "configs"),
        "LD_LIBRARY_PATH": ":".join(x for x in (args.rdkafka_dir, bin_dir,
                                                 os.environ.get("LD_LIBRARY_PATH")) if x),
    })
    os.makedirs(os.path.join(base, "run"), exist_ok=True)
    cmd = [exe, "run", "standalone"]
    print(f"milvus_server.py: {args.name}: config {config_file}; "
          f"ports {ports}; exec {' '.join(cmd)}", flush=True)
    if args.dry_run:
        return 0
    os.chdir(base)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(exe, cmd, env)
    return 1  # not reached


def _enable_kafka(config_file: str, brokers: str) -> None:
    """The template's `kafka:` section is commented out: put a real one."""
    import re  # noqa: PLC0415
    with open(config_file, encoding="utf-8") as fp:
        text = fp.read()
    block = "\n".join([
        "kafka:",
        f"  brokerList: {brokers}",
        "  saslUsername:",
        "  saslPassword:",
        "  saslMechanisms: PLAIN",
        "  securityProtocol: PLAINTEXT",
        "  readTimeout: 10 # read message timeout in seconds",
    ]) + "\n"
    text, n = re.subn(r"^# kafka:\n(?:#   .*\n)+", block, text, flags=re.M)
    if n != 1:
        die("could not find the commented-out kafka section in the milvus template")
    with open(config_file, "w", encoding="utf-8") as fp:
        fp.write(text)


def _check_applied(config_file: str, extra: dict) -> None:
    """The template engine silently ignores keys it does not contain: fail instead."""
    want = {k: str(v) for k, v in extra.items()}
    found = set()
    stack = []
    with open(config_file, encoding="utf-8") as fp:
        for line in fp:
            stripped = line.split("#", 1)[0].rstrip()
            if not stripped.strip() or ":" not in stripped:
                continue
            indent = len(stripped) - len(stripped.lstrip(" "))
            key, _, val = stripped.strip().partition(":")
            level = indent // 2
            stack = stack[:level] + [key.strip()]
            dotted = ".".join(stack)
            if dotted in want and val.strip() == want[dotted]:
                found.add(dotted)
    missing = sorted(set(want) - found)
    if missing:
        die(f"config keys not present in the milvus template (not applied): {missing}")


if __name__ == "__main__":
    sys.exit(main())

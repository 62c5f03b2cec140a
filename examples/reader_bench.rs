//! Read+decode throughput of the source reader: runs the production
//! [`ChannelReader`] (the configured queue's client, typed decoding, metrics)
//! on each given channel in parallel, as a replication task does, from
//! `--after` up to the last message each channel held at start, and counts
//! what comes out. Prints one JSON object; `benches/reader_bench.py` drives it.
//!
//! The queue is the agent's `[source]` configuration, opened by the same
//! `open_queue` as `serve` (natsmq, Kafka, ...): `--config FILE` and the
//! `MILVUS_CDC_SOURCE__*` variables; `--nats URL` is a shorthand for
//! `MILVUS_CDC_SOURCE__NATS_URL`.
//!
//! ```text
//! cargo build --release --example reader_bench
//! target/release/examples/reader_bench --nats nats://127.0.0.1:4222 \
//!     --channel by-dev-rootcoord-dml_0 --channel by-dev-rootcoord-dml_1@1200
//! MILVUS_CDC_SOURCE__MQ_TYPE=kafka MILVUS_CDC_SOURCE__KAFKA__BROKERS='["127.0.0.1:9092"]' \
//!     target/release/examples/reader_bench --channel by-dev-rootcoord-dml_0
//! ```
//!
//! `NAME@SEQ` starts that channel after `SEQ`; otherwise after `--after`
//! (default 0: the whole retained stream).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and bench helpers

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use milvus_cdc::{
    config::{Config, ConfigOverrides},
    metrics::{ChannelLabels, Metrics},
    source::{
        event::EventKind,
        mq::{MessageQueue, StartAt},
        open_queue,
        reader::ChannelReader,
    },
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Counts {
    messages: u64,
    rows: u64,
    kinds: BTreeMap<&'static str, u64>,
    first_sequence: u64,
    last_sequence: u64,
    seconds: f64,
}

fn usage() -> ! {
    eprintln!(
        "usage: reader_bench [--config FILE] [--nats URL] --channel NAME[@SEQ] [--channel ...] [--after SEQ] [--queue N]"
    );
    std::process::exit(2)
}

/// Peak resident set size of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The channel's last sequence; retried, a busy source can be slow to answer.
async fn last_sequence(mq: &dyn MessageQueue, channel: &str) -> u64 {
    let mut attempt = 0;
    loop {
        match mq.info(channel).await {
            Ok(info) => return info.last_sequence,
            Err(e) if attempt < 5 => {
                eprintln!("reader_bench: {e}, retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                eprintln!("reader_bench: {e}");
                std::process::exit(1)
            }
        }
    }
}

#[tokio::main]
async fn main() {
    // RUST_LOG=milvus_cdc=debug,async_nats=debug shows reconnects and stalls
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut nats = None;
    let mut config = None;
    let mut channels = Vec::new();
    let mut after = 0u64;
    let mut queue = 1024usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--nats" => nats = Some(val()),
            "--config" => config = Some(std::path::PathBuf::from(val())),
            "--channel" => channels.push(val()),
            "--after" => after = val().parse().unwrap_or_else(|_| usage()),
            "--queue" => queue = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if channels.is_empty() {
        usage()
    }
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(url) = nats {
        env.push(("MILVUS_CDC_SOURCE__NATS_URL".into(), url));
    }
    let mut cfg =
        Config::load(config.as_deref(), env, &ConfigOverrides::default()).unwrap_or_else(|e| {
            eprintln!("reader_bench: {e}");
            std::process::exit(2)
        });
    // A busy source can be slow to answer the first requests.
    cfg.source.connect_timeout = cfg.source.connect_timeout.max(Duration::from_secs(10));
    let mq = open_queue(&cfg.source, false).await.unwrap_or_else(|e| {
        eprintln!("reader_bench: {e}");
        std::process::exit(1)
    });
    let metrics = Metrics::new();
    let start = Instant::now();
    let mut tasks = Vec::new();
    let channels: Vec<(String, u64)> = channels
        .iter()
        .map(|c| match c.split_once('@') {
            Some((name, seq)) => (name.to_string(), seq.parse().unwrap_or_else(|_| usage())),
            None => (c.clone(), after),
        })
        .collect();
    for (ch, after) in channels.iter().cloned() {
        let end = last_sequence(mq.as_ref(), &ch).await;
        let (tx, mut rx) = mpsc::channel(queue);
        let cancel = CancellationToken::new();
        let reader = ChannelReader::new(mq.clone(), &ch, StartAt::After(after))
            .with_metrics(metrics.clone(), "bench");
        let handle = tokio::spawn(reader.run(tx, cancel.clone()));
        tasks.push(tokio::spawn(async move {
            let mut c = Counts::default();
            if end <= after {
                cancel.cancel();
                let _ = handle.await;
                return c;
            }
            while let Some(ev) = rx.recv().await {
                if c.messages == 0 {
                    c.first_sequence = ev.position.sequence;
                }
                c.messages += 1;
                c.last_sequence = ev.position.sequence;
                match &ev.kind {
                    EventKind::Insert(i) => c.rows += i.num_rows,
                    EventKind::Delete(d) => c.rows += d.num_rows as u64,
                    _ => {}
                }
                *c.kinds.entry(ev.kind.name()).or_default() += 1;
                if ev.position.sequence >= end {
                    break;
                }
            }
            c.seconds = start.elapsed().as_secs_f64();
            cancel.cancel();
            let _ = handle.await;
            c
        }));
    }
    let mut per_channel = serde_json::Map::new();
    let (mut messages, mut rows, mut bytes) = (0u64, 0u64, 0u64);
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    for ((ch, _), t) in channels.iter().zip(tasks) {
        let c = t.await.expect("reader task");
        let b = metrics
            .source_bytes
            .get_or_create(&ChannelLabels {
                task_id: "bench".into(),
                channel: ch.clone(),
            })
            .get();
        messages += c.messages;
        rows += c.rows;
        bytes += b;
        for (k, n) in &c.kinds {
            *kinds.entry(k).or_default() += n;
        }
        per_channel.insert(
            ch.clone(),
            json!({"messages": c.messages, "rows": c.rows, "bytes": b, "seconds": c.seconds,
                   "first_sequence": c.first_sequence, "last_sequence": c.last_sequence,
                   "kinds": c.kinds}),
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    let out = json!({
        "channels": channels.len(),
        "messages": messages,
        "rows": rows,
        "bytes": bytes,
        "seconds": seconds,
        "messages_per_s": messages as f64 / seconds,
        "rows_per_s": rows as f64 / seconds,
        "mb_per_s": bytes as f64 / seconds / 1e6,
        "peak_rss_kib": peak_rss_kib(),
        "kinds": kinds,
        "per_channel": per_channel,
    });
    println!("{out}");
}

//! The ordering and reduction against a reference model of Milvus's
//! semantics, without servers: random requests of several clients (inserts,
//! deletes, upserts on a few shared keys, two partitions) reach one channel
//! in a random interleaving, with time ticks; after every tick the target,
//! written through [`Windows`] + [`apply_window`] into an in-memory sink,
//! must show what the model shows at that tick, also across restarts from
//! the last checkpoint (replays).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use super::{
    apply::{apply_window, Sink},
    batch::InsertBatch,
    reduce::{DeleteStep, Limits, Pk, RowKey, Scope},
    window::{Cut, Windows},
};
use crate::{
    proto::{
        common::{MsgBase, MsgType},
        msg::{DeleteRequest, InsertRequest},
        schema::{
            field_data::Field, i_ds::IdField, scalar_field::Data as Scalar,
            vector_field::Data as Vector, FieldData, FloatArray, IDs, LongArray, ScalarField,
            StringArray, VectorField,
        },
    },
    source::event::{Event, EventKind, Position},
};

const COLL: i64 = 7;
const PARTS: [&str; 2] = ["_default", "p1"];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One source request's messages (an upsert has two).
#[derive(Debug, Clone)]
enum Op {
    Insert {
        part: usize,
        rows: Vec<(i64, String)>,
    },
    Delete {
        part: Option<usize>,
        keys: Vec<i64>,
    },
}

/// Milvus's semantics: versions with timestamps; a delete at T removes
/// versions older than T in its scope; a query shows the newest version per
/// key and partition.
#[derive(Default)]
struct Model {
    versions: Vec<(i64, usize, u64, String)>, // key, partition, ts, value
}

impl Model {
    fn apply(&mut self, ts: u64, op: &Op) {
        match op {
            Op::Insert { part, rows } => {
                for (k, v) in rows {
                    self.versions.push((*k, *part, ts, v.clone()));
                }
            }
            Op::Delete { part, keys } => self.versions.retain(|(k, p, vts, _)| {
                !(keys.contains(k) && *vts < ts && part.is_none_or(|dp| dp == *p))
            }),
        }
    }

    fn view(&self) -> BTreeMap<(i64, String), String> {
        let mut newest: BTreeMap<(i64, usize), (u64, usize, &String)> = BTreeMap::new();
        for (i, (k, p, ts, v)) in self.versions.iter().enumerate() {
            let e = newest.entry((*k, *p)).or_insert((*ts, i, v));
            if (*ts, i) >= (e.0, e.1) {
                *e = (*ts, i, v);
            }
        }
        newest
            .into_iter()
            .map(|((k, p), (_, _, v))| ((k, PARTS[p].to_string()), v.clone()))
            .collect()
    }
}

/// The target as the sink writes it: a row per key and partition.
#[derive(Default, Clone)]
struct ModelSink {
    rows: Arc<Mutex<BTreeMap<(i64, String), String>>>,
    log: Arc<Mutex<Vec<String>>>,
}

fn column_i64(b: &InsertBatch, name: &str) -> Vec<i64> {
    b.columns
        .iter()
        .find(|f| f.field_name == name)
        .and_then(|f| match &f.field {
            Some(Field::Scalars(ScalarField {
                data: Some(Scalar::LongData(l)),
            })) => Some(l.data.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn column_str(b: &InsertBatch, name: &str) -> Vec<String> {
    b.columns
        .iter()
        .find(|f| f.field_name == name)
        .and_then(|f| match &f.field {
            Some(Field::Scalars(ScalarField {
                data: Some(Scalar::StringData(s)),
            })) => Some(s.data.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

impl Sink for ModelSink {
    async fn row_key(&self, _collection_id: i64) -> Option<Option<RowKey>> {
        Some(Some(RowKey {
            pk_field: "pk".into(),
            partition_key: false,
        }))
    }

    async fn delete(&self, step: &DeleteStep) -> bool {
        let keys: Vec<i64> = match &step.keys {
            crate::sink::PrimaryKeys::Int(v) => v.clone(),
            crate::sink::PrimaryKeys::Str(_) => panic!("int keys only"),
        };
        self.log
            .lock()
            .unwrap()
            .push(format!("delete {:?} {:?}", step.scope, keys));
        self.rows.lock().unwrap().retain(|(k, p), _| {
            !(keys.contains(k)
                && match &step.scope {
                    Scope::All => true,
                    Scope::Partition(sp) => sp == p,
                })
        });
        true
    }

    async fn upsert(&self, batch: &InsertBatch) -> bool {
        let pks = column_i64(batch, "pk");
        let vals = column_str(batch, "v");
        assert_eq!(pks.len() as u64, batch.rows);
        let vec_len = batch
            .columns
            .iter()
            .find_map(|f| match &f.field {
                Some(Field::Vectors(VectorField {
                    data: Some(Vector::FloatVector(a)),
                    ..
                })) => Some(a.data.len()),
                _ => None,
            })
            .unwrap_or_default();
        assert_eq!(
            vec_len as u64,
            2 * batch.rows,
            "vectors sliced with their rows"
        );
        self.log
            .lock()
            .unwrap()
            .push(format!("upsert {} {:?}", batch.partition, pks));
        let mut rows = self.rows.lock().unwrap();
        for (k, v) in pks.into_iter().zip(vals) {
            rows.insert((k, batch.partition.clone()), v);
        }
        true
    }

    async fn apply(&self, event: Event) -> bool {
        self.log
            .lock()
            .unwrap()
            .push(format!("ddl {}", event.kind.name()));
        true
    }
}

fn insert_msg(ts: u64, part: usize, rows: &[(i64, String)]) -> EventKind {
    EventKind::Insert(Box::new(InsertRequest {
        // An upsert's insert has no message timestamp, only row timestamps.
        base: Some(MsgBase {
            msg_type: MsgType::Insert as i32,
            timestamp: 0,
            ..Default::default()
        }),
        collection_id: COLL,
        partition_name: PARTS[part].into(),
        num_rows: rows.len() as u64,
        timestamps: vec![ts; rows.len()],
        fields_data: vec![
            FieldData {
                field_name: "pk".into(),
                field: Some(Field::Scalars(ScalarField {
                    data: Some(Scalar::LongData(LongArray {
                        data: rows.iter().map(|r| r.0).collect(),
                    })),
                })),
                ..Default::default()
            },
            FieldData {
                field_name: "v".into(),
                field: Some(Field::Scalars(ScalarField {
                    data: Some(Scalar::StringData(StringArray {
                        data: rows.iter().map(|r| r.1.clone()).collect(),
                    })),
                })),
                ..Default::default()
            },
            FieldData {
                field_name: "vec".into(),
                field: Some(Field::Vectors(VectorField {
                    dim: 2,
                    data: Some(Vector::FloatVector(FloatArray {
                        data: rows.iter().flat_map(|r| [r.0 as f32, 1.0]).collect(),
                    })),
                })),
                ..Default::default()
            },
        ],
        ..Default::default()
    }))
}

fn delete_msg(ts: u64, part: Option<usize>, keys: &[i64]) -> EventKind {
    EventKind::Delete(Box::new(DeleteRequest {
        collection_id: COLL,
        partition_id: part.map_or(-1, |p| 100 + p as i64),
        partition_name: part.map_or(String::new(), |p| PARTS[p].into()),
        num_rows: keys.len() as i64,
        timestamps: vec![ts; keys.len()],
        primary_keys: Some(IDs {
            id_field: Some(IdField::IntId(LongArray {
                data: keys.to_vec(),
            })),
        }),
        ..Default::default()
    }))
}

/// A random workload: (ts, op) per message and the channel in arrival order
/// (messages and ticks), with each tick's timestamp.
fn workload(rng: &mut Rng, requests: usize) -> (Vec<(u64, Op)>, Vec<Event>) {
    let mut msgs: Vec<(u64, u64, Op)> = Vec::new(); // arrival, ts, op
    for i in 0..requests {
        let ts = 1000 + 10 * i as u64;
        let arrival = |rng: &mut Rng| ts + rng.below(60);
        let keys: Vec<i64> = (0..1 + rng.below(3)).map(|_| rng.below(5) as i64).collect();
        let part = rng.below(2) as usize;
        let val = |k: &i64| format!("r{i}k{k}");
        match rng.below(3) {
            0 => {
                let rows = keys.iter().map(|k| (*k, val(k))).collect();
                let a = arrival(rng);
                msgs.push((a, ts, Op::Insert { part, rows }));
            }
            1 => {
                let scope = (rng.below(2) == 0).then_some(part);
                let a = arrival(rng);
                msgs.push((a, ts, Op::Delete { part: scope, keys }));
            }
            _ => {
                // An upsert: its halves arrive separately, others in between.
                let rows: Vec<(i64, String)> = keys.iter().map(|k| (*k, val(k))).collect();
                let scope = (rng.below(2) == 0).then_some(part);
                let (a1, a2) = (arrival(rng), arrival(rng));
                msgs.push((a1, ts, Op::Insert { part, rows }));
                msgs.push((a2, ts, Op::Delete { part: scope, keys }));
            }
        }
    }
    let ops: Vec<(u64, Op)> = msgs.iter().map(|(_, ts, op)| (*ts, op.clone())).collect();
    let last_ts = msgs.iter().map(|m| m.1).max().unwrap_or(0);
    // Ticks every 25: a tick at T comes once everything up to T arrived.
    let mut timeline: Vec<(u64, Slot)> = msgs
        .into_iter()
        .map(|(a, ts, op)| (a, Slot::Msg(ts, op)))
        .collect();
    let mut t = 1000;
    while t <= last_ts + 100 {
        let after = timeline
            .iter()
            .filter_map(|(a, s)| matches!(s, Slot::Msg(ts, _) if *ts <= t).then_some(*a))
            .max()
            .unwrap_or(0)
            .max(t);
        timeline.push((after, Slot::Tick(t)));
        t += 25;
    }
    // At the same instant, messages before ticks.
    timeline.sort_by_key(|(a, s)| (*a, matches!(s, Slot::Tick(_))));
    let events = timeline
        .into_iter()
        .enumerate()
        .map(|(i, (_, slot))| {
            let (ts, kind) = match slot {
                Slot::Tick(t) => (t, EventKind::TimeTick),
                Slot::Msg(ts, Op::Insert { part, rows }) => (ts, insert_msg(ts, part, &rows)),
                Slot::Msg(ts, Op::Delete { part, keys }) => (ts, delete_msg(ts, part, &keys)),
            };
            Event {
                position: Position {
                    channel: Arc::from("dml_0"),
                    sequence: i as u64 + 1,
                },
                timestamp: ts,
                kind,
            }
        })
        .collect();
    (ops, events)
}

/// A message (timestamp, request) or a tick in the channel's timeline.
enum Slot {
    Msg(u64, Op),
    Tick(u64),
}

fn model_at(ops: &[(u64, Op)], t: u64) -> BTreeMap<(i64, String), String> {
    let mut sorted: Vec<&(u64, Op)> = ops.iter().filter(|(ts, _)| *ts <= t).collect();
    sorted.sort_by_key(|(ts, _)| *ts);
    let mut m = Model::default();
    for (ts, op) in sorted {
        m.apply(*ts, op);
    }
    m.view()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Feeds `events` through windows into `sink`; at `crash_at`, restarts
/// from a cut two windows old (as a new leader does from the last durable
/// checkpoint), so that windows are applied twice. Checks the model after
/// every tick (after a restart, once the replay has passed the crash).
fn run_case(seed: u64, crash_at: Option<usize>, limits: Limits) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let requests = 12 + rng.below(20) as usize;
    let (ops, events) = workload(&mut rng, requests);
    let sink = ModelSink::default();
    let mut windows = Windows::new(Cut::default());
    let mut cuts = vec![Cut::default()];
    let mut check_from = 0;
    let mut i = 0;
    let mut crashed = false;
    while i < events.len() {
        if crash_at == Some(i) && !crashed {
            crashed = true;
            let cut = cuts[cuts.len().saturating_sub(3)];
            check_from = windows.cut().through_ts;
            windows = Windows::new(cut);
            i = usize::try_from(cut.resume_after).unwrap(); // sequences are 1-based
            continue;
        }
        let ev = events[i].clone();
        i += 1;
        let Some(rel) = windows.push(ev) else {
            continue;
        };
        block_on(apply_window(&sink, rel.events, limits)).expect("applied");
        cuts.push(rel.cut);
        if rel.cut.through_ts < check_from {
            continue;
        }
        let want = model_at(&ops, rel.cut.through_ts);
        let got = sink.rows.lock().unwrap().clone();
        assert_eq!(
            got,
            want,
            "seed {seed} crash {crash_at:?}: target differs from the source at tick {}\nlog: {:#?}",
            rel.cut.through_ts,
            sink.log.lock().unwrap()
        );
    }
}

#[test]
fn random_interleavings_match_the_model_at_every_tick() {
    let limits = Limits {
        rows: 10_000,
        bytes: 1 << 24,
    };
    for seed in 1..=1500 {
        run_case(seed, None, limits);
    }
}

#[test]
fn replays_from_the_last_cut_match_the_model() {
    let limits = Limits {
        rows: 2,
        bytes: 1 << 24,
    };
    for seed in 1..=800 {
        let crash = 5 + (seed as usize * 7) % 40;
        run_case(seed, Some(crash), limits);
    }
}

fn ev(seq: u64, ts: u64, kind: EventKind) -> Event {
    Event {
        position: Position {
            channel: Arc::from("dml_0"),
            sequence: seq,
        },
        timestamp: ts,
        kind,
    }
}

fn rows(keys: &[i64], tag: &str) -> Vec<(i64, String)> {
    keys.iter().map(|k| (*k, format!("{tag}{k}"))).collect()
}

fn run_fixed(events: Vec<Event>) -> (BTreeMap<(i64, String), String>, Vec<String>) {
    let sink = ModelSink::default();
    let mut w = Windows::new(Cut::default());
    for e in events {
        if let Some(rel) = w.push(e) {
            block_on(apply_window(
                &sink,
                rel.events,
                Limits {
                    rows: 100,
                    bytes: 1 << 20,
                },
            ))
            .unwrap();
        }
    }
    let rows = sink.rows.lock().unwrap().clone();
    let log = sink.log.lock().unwrap().clone();
    (rows, log)
}

fn expect(pairs: &[(i64, &str, &str)]) -> BTreeMap<(i64, String), String> {
    pairs
        .iter()
        .map(|(k, p, v)| ((*k, p.to_string()), v.to_string()))
        .collect()
}

#[test]
fn interleaved_upsert_halves_of_two_clients() {
    // Client A upserts key 1 at ts 10, client B at ts 11; the halves
    // interleave: A.insert, B.insert, A.delete, B.delete.
    let (rows, _) = run_fixed(vec![
        ev(1, 10, insert_msg(10, 0, &rows(&[1], "a"))),
        ev(2, 11, insert_msg(11, 0, &rows(&[1], "b"))),
        ev(3, 10, delete_msg(10, Some(0), &[1])),
        ev(4, 11, delete_msg(11, Some(0), &[1])),
        ev(5, 20, EventKind::TimeTick),
    ]);
    assert_eq!(rows, expect(&[(1, "_default", "b1")]));
}

#[test]
fn a_delete_that_arrives_after_a_later_insert_spares_it() {
    let (rows, log) = run_fixed(vec![
        ev(1, 5, insert_msg(5, 0, &rows(&[1], "old"))),
        ev(2, 6, EventKind::TimeTick),
        ev(3, 12, insert_msg(12, 0, &rows(&[1], "new"))),
        ev(4, 11, delete_msg(11, None, &[1])),
        ev(5, 20, EventKind::TimeTick),
    ]);
    assert_eq!(rows, expect(&[(1, "_default", "new1")]));
    // The delete is written before the surviving row.
    let d = log.iter().position(|l| l.starts_with("delete")).unwrap();
    let u = log.iter().rposition(|l| l.starts_with("upsert")).unwrap();
    assert!(d < u, "{log:?}");
}

#[test]
fn same_timestamp_insert_and_delete_keep_the_insert() {
    let (rows, _) = run_fixed(vec![
        ev(1, 5, insert_msg(5, 0, &rows(&[1, 2], "old"))),
        ev(2, 9, delete_msg(9, Some(0), &[1, 2])),
        ev(3, 9, insert_msg(9, 0, &rows(&[1], "up"))),
        ev(4, 10, EventKind::TimeTick),
    ]);
    assert_eq!(rows, expect(&[(1, "_default", "up1")]));
}

#[test]
fn a_key_written_ten_times_in_a_window_is_written_once() {
    let mut events: Vec<Event> = (0..10)
        .map(|i| {
            ev(
                i + 1,
                10 + i,
                insert_msg(10 + i, 0, &rows(&[1], &format!("v{i}-"))),
            )
        })
        .collect();
    events.push(ev(11, 100, EventKind::TimeTick));
    let (rows, log) = run_fixed(events);
    assert_eq!(rows, expect(&[(1, "_default", "v9-1")]));
    assert_eq!(log, vec!["upsert _default [1]".to_string()]);
}

#[test]
fn duplicates_from_a_replay_are_dropped_by_the_cut() {
    let mut w = Windows::new(Cut {
        resume_after: 2,
        through_ts: 10,
    });
    // A re-read message at or before the cut's time is not applied again.
    assert!(w
        .push(ev(3, 9, insert_msg(9, 0, &rows(&[1], "x"))))
        .is_none());
    let rel = w.push(ev(4, 20, EventKind::TimeTick)).unwrap();
    assert!(rel.events.is_empty());
}

#[test]
fn ddl_inside_a_window_splits_it_in_timestamp_order() {
    let create = EventKind::CreatePartition(crate::proto::msg::CreatePartitionRequest::default());
    let (_, log) = run_fixed(vec![
        ev(1, 13, insert_msg(13, 0, &rows(&[2], "after"))),
        ev(2, 12, create),
        ev(3, 11, insert_msg(11, 0, &rows(&[1], "before"))),
        ev(4, 20, EventKind::TimeTick),
    ]);
    assert_eq!(
        log,
        vec![
            "upsert _default [1]".to_string(),
            "ddl create_partition".to_string(),
            "upsert _default [2]".to_string(),
        ]
    );
}

#[test]
fn unreduced_keys_are_not_lost_when_the_key_column_is_unknown() {
    struct NoPk(ModelSink);
    impl Sink for NoPk {
        async fn row_key(&self, _: i64) -> Option<Option<RowKey>> {
            Some(None)
        }
        async fn delete(&self, s: &DeleteStep) -> bool {
            self.0.delete(s).await
        }
        async fn upsert(&self, b: &InsertBatch) -> bool {
            self.0.upsert(b).await
        }
        async fn apply(&self, e: Event) -> bool {
            self.0.apply(e).await
        }
    }
    let sink = NoPk(ModelSink::default());
    let events = vec![ev(1, 10, insert_msg(10, 0, &rows(&[1, 2], "x")))];
    block_on(apply_window(
        &sink,
        events,
        Limits {
            rows: 100,
            bytes: 1 << 20,
        },
    ))
    .unwrap();
    assert_eq!(sink.0.rows.lock().unwrap().len(), 2);
    let _ = HashMap::<Pk, ()>::new();
}

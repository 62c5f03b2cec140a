//! Decodes messages captured from a real Milvus 2.3.5 source with natsmq
//! (`tests/fixtures/`, made by `scripts/capture_fixtures.py`) and checks the
//! decoded fields against what the pymilvus workload wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::{path::PathBuf, sync::Arc};

use milvus_cdc::{
    proto::schema::{
        field_data::Field, scalar_field::Data as Scalar, vector_field::Data as Vector,
    },
    sink::PrimaryKeys,
    source::{
        decode::decode,
        event::{Event, EventKind, Position},
        inspect::column_values,
    },
};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str) -> (Event, Value) {
    let m = manifest();
    let f = &m["fixtures"][name];
    let bytes = std::fs::read(fixtures().join(f["file"].as_str().unwrap())).unwrap();
    let pos = Position {
        channel: Arc::from(f["stream"].as_str().unwrap()),
        sequence: f["sequence"].as_u64().unwrap(),
    };
    let ev = decode(pos, &bytes).unwrap();
    assert_eq!(ev.position.sequence, f["sequence"].as_u64().unwrap());
    assert_eq!(
        ev.timestamp,
        f["expected"]["base"]["timestamp"].as_u64().unwrap()
    );
    (ev, m)
}

#[test]
fn create_collection() {
    let (ev, m) = load("create_collection");
    let EventKind::CreateCollection(c) = ev.kind else {
        panic!("{:?}", ev.kind)
    };
    assert_eq!(c.name(), "cdc_fixture", "the name comes from the schema");
    assert_eq!(
        c.request.collection_id,
        m["collection_id"].as_i64().unwrap()
    );
    assert_eq!(c.request.physical_channel_names, ["by-dev-rootcoord-dml_0"]);
    let names: Vec<&str> = c.user_fields().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["pk", "vec", "name"]);
    let pk = c.user_fields().next().unwrap();
    assert!(pk.is_primary_key && !pk.auto_id);
    let vec = c.user_fields().nth(1).unwrap();
    assert!(vec
        .type_params
        .iter()
        .any(|p| p.key == "dim" && p.value == "4"));
    let name = c.user_fields().nth(2).unwrap();
    assert!(name
        .type_params
        .iter()
        .any(|p| p.key == "max_length" && p.value == "64"));
    assert!(
        c.schema.fields.iter().any(|f| f.name == "RowID"),
        "system fields are in the message"
    );
}

#[test]
fn insert() {
    let (ev, m) = load("insert");
    let EventKind::Insert(i) = ev.kind else {
        panic!("{:?}", ev.kind)
    };
    let w = &m["workload"]["inserted"];
    assert_eq!(i.collection_name, "cdc_fixture");
    assert_eq!(i.num_rows, 5);
    let col = |name: &str| {
        let f = i.fields_data.iter().find(|f| f.field_name == name).unwrap();
        column_values(f)
    };
    assert_eq!(col("pk"), w["pk"]);
    assert_eq!(col("vec"), w["vec"]);
    assert_eq!(col("name"), w["name"]);
    // Typed access, not only through the JSON view.
    let pk = i.fields_data.iter().find(|f| f.field_name == "pk").unwrap();
    assert!(matches!(
        &pk.field,
        Some(Field::Scalars(s)) if matches!(&s.data, Some(Scalar::LongData(l)) if l.data == [1, 2, 3, 4, 5])
    ));
    let v = i
        .fields_data
        .iter()
        .find(|f| f.field_name == "vec")
        .unwrap();
    assert!(matches!(
        &v.field,
        Some(Field::Vectors(vf)) if vf.dim == 4 && matches!(&vf.data, Some(Vector::FloatVector(f)) if f.data.len() == 20)
    ));
    assert_eq!(i.timestamps.len(), 5);
}

#[test]
fn delete() {
    let (ev, m) = load("delete");
    let EventKind::Delete(d) = ev.kind else {
        panic!("{:?}", ev.kind)
    };
    let keys = PrimaryKeys::from_ids(d.primary_keys.as_ref(), &d.int64_primary_keys);
    let expected: Vec<i64> = m["workload"]["deleted_pks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(keys, PrimaryKeys::Int(expected));
    assert_eq!(d.collection_name, "cdc_fixture");
    assert_eq!(d.db_name, "", "DML messages carry no database name");
}

#[test]
fn time_tick() {
    let (ev, _) = load("time_tick");
    assert_eq!(ev.kind, EventKind::TimeTick);
}

#[test]
fn create_index() {
    let (ev, m) = load("create_index");
    let EventKind::CreateIndex(c) = ev.kind else {
        panic!("{:?}", ev.kind)
    };
    let idx = &m["workload"]["index"];
    assert_eq!(c.collection_name, "cdc_fixture");
    assert_eq!(c.db_name, "default");
    assert_eq!(json!(c.field_name), idx["field"]);
    assert_eq!(json!(c.index_name), idx["index_name"]);
    let param = |k: &str| {
        c.extra_params
            .iter()
            .find(|p| p.key == k)
            .map(|p| p.value.clone())
            .unwrap()
    };
    assert_eq!(json!(param("index_type")), idx["index_type"]);
    assert_eq!(json!(param("metric_type")), idx["metric_type"]);
    let params: Value = serde_json::from_str(&param("params")).unwrap();
    assert_eq!(params, idx["params"]);
}

#[test]
fn load_collection_and_flush() {
    let (ev, _) = load("load_collection");
    let EventKind::LoadCollection(l) = ev.kind else {
        panic!("{:?}", ev.kind)
    };
    assert_eq!(l.collection_name, "cdc_fixture");
    assert_eq!(l.replica_number, 1);
    let (ev, _) = load("flush");
    let EventKind::Flush(f) = ev.kind else {
        panic!("{:?}", ev.kind)
    };
    assert_eq!(f.collection_names, ["cdc_fixture"]);
}

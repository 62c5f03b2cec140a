//! Metadata comparison: schema fields, collection settings, properties,
//! partitions, aliases, indexes and load state.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{api::CollectionMeta, both, presence, rows::short, zip_maps};
use crate::{
    milvus::is_system_field,
    proto::{
        common::{ConsistencyLevel, KeyValuePair, LoadState},
        milvus as pb,
        schema::{CollectionSchema, DataType, FieldSchema},
    },
    sink::SOURCE_ID_PROPERTY,
};

/// Compares everything but rows. Pushes differences and notes (without scope).
pub(super) fn compare_meta(
    s: &CollectionMeta,
    t: &CollectionMeta,
    diffs: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let (ss, ts) = (s.schema(), t.schema());
    compare_fields(&ss, &ts, diffs, notes);
    if ss.enable_dynamic_field != ts.enable_dynamic_field {
        diffs.push(both(
            "enable_dynamic_field",
            ss.enable_dynamic_field,
            ts.enable_dynamic_field,
        ));
    }
    if ss.description != ts.description {
        diffs.push(both(
            "description",
            quoted(&ss.description),
            quoted(&ts.description),
        ));
    }
    if s.desc.shards_num != t.desc.shards_num {
        diffs.push(both("shards_num", s.desc.shards_num, t.desc.shards_num));
    }
    if s.desc.consistency_level != t.desc.consistency_level {
        diffs.push(both(
            "consistency level",
            consistency_name(s.desc.consistency_level),
            consistency_name(t.desc.consistency_level),
        ));
    }
    let props = |kv: &[KeyValuePair]| {
        let mut m = param_map(kv);
        m.remove(SOURCE_ID_PROPERTY);
        m
    };
    for d in map_diff(&props(&s.desc.properties), &props(&t.desc.properties)) {
        diffs.push(format!("property {d}"));
    }
    compare_sets("partition", &s.partitions, &t.partitions, diffs);
    compare_sets("alias", &s.desc.aliases, &t.desc.aliases, diffs);
    compare_indexes(&s.indexes, &t.indexes, diffs);
    if s.load != t.load {
        diffs.push(both("load state", load_name(s.load), load_name(t.load)));
    }
    for (p, s_state, t_state) in zip_maps(&s.partition_loads, &t.partition_loads) {
        if s.load == t.load && s_state != t_state {
            diffs.push(both(
                &format!("load state of partition {p}"),
                s_state.map_or("absent", |x| load_name(*x)),
                t_state.map_or("absent", |x| load_name(*x)),
            ));
        }
    }
}

/// Reports the members only one side has.
pub(super) fn compare_sets(what: &str, s: &[String], t: &[String], diffs: &mut Vec<String>) {
    let (s, t): (BTreeSet<&String>, BTreeSet<&String>) = (s.iter().collect(), t.iter().collect());
    for x in s.symmetric_difference(&t) {
        diffs.push(presence(&format!("{what} {}", quoted(x)), s.contains(x)));
    }
}

/// The user fields: system fields and the dynamic `$meta` field are left
/// out (the latter is covered by `enable_dynamic_field`).
pub(super) fn user_fields(schema: &CollectionSchema) -> Vec<&FieldSchema> {
    schema
        .fields
        .iter()
        .filter(|f| !is_system_field(f) && !f.is_dynamic)
        .collect()
}

pub(super) fn compare_fields(
    s: &CollectionSchema,
    t: &CollectionSchema,
    diffs: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let (sf, tf) = (user_fields(s), user_fields(t));
    let names = |v: &[&FieldSchema]| v.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
    let (sn, tn) = (names(&sf), names(&tf));
    compare_sets("field", &sn, &tn, diffs);
    let common_s: Vec<&String> = sn.iter().filter(|n| tn.contains(n)).collect();
    let common_t: Vec<&String> = tn.iter().filter(|n| sn.contains(n)).collect();
    if common_s != common_t {
        diffs.push(both(
            "field order",
            format!("{common_s:?}"),
            format!("{common_t:?}"),
        ));
    }
    for s_field in &sf {
        if let Some(t_field) = tf.iter().find(|f| f.name == s_field.name) {
            compare_field(s_field, t_field, diffs, notes);
        }
    }
}

pub(super) fn compare_field(
    s: &FieldSchema,
    t: &FieldSchema,
    diffs: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let name = &s.name;
    let mut check = |what: &str, sv: String, tv: String| {
        if sv != tv {
            diffs.push(both(&format!("field {name} {what}"), sv, tv));
        }
    };
    check("data_type", type_name(s.data_type), type_name(t.data_type));
    check(
        "element_type",
        type_name(s.element_type),
        type_name(t.element_type),
    );
    check(
        "is_primary_key",
        s.is_primary_key.to_string(),
        t.is_primary_key.to_string(),
    );
    check(
        "is_partition_key",
        s.is_partition_key.to_string(),
        t.is_partition_key.to_string(),
    );
    check(
        "description",
        quoted(&s.description),
        quoted(&t.description),
    );
    check(
        "default_value",
        format!("{:?}", s.default_value),
        format!("{:?}", t.default_value),
    );
    for d in map_diff(&param_map(&s.type_params), &param_map(&t.type_params)) {
        diffs.push(format!("field {name} type param {d}"));
    }
    match (s.auto_id, t.auto_id) {
        (true, false) => notes.push(format!(
            "field {name}: auto_id on the source, off on the target (expected: the replica keeps the source's keys)"
        )),
        (false, true) => diffs.push(both(&format!("field {name} auto_id"), false, true)),
        _ => {}
    }
}

pub(super) fn compare_indexes(
    s: &[pb::IndexDescription],
    t: &[pb::IndexDescription],
    diffs: &mut Vec<String>,
) {
    let by_name = |v: &[pb::IndexDescription]| {
        v.iter()
            .map(|i| (i.index_name.clone(), i.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let (sm, tm) = (by_name(s), by_name(t));
    for (name, si, ti) in zip_maps(&sm, &tm) {
        let label = format!("index {}", quoted(name));
        let (si, ti) = match (si, ti) {
            (Some(a), Some(b)) => (a, b),
            (a, _) => {
                let field = a.or(ti).map(|i| i.field_name.as_str()).unwrap_or("");
                diffs.push(presence(&format!("{label} on field {field}"), a.is_some()));
                continue;
            }
        };
        if si.field_name != ti.field_name {
            diffs.push(both(
                &format!("{label} field"),
                &si.field_name,
                &ti.field_name,
            ));
        }
        for d in map_diff(&param_map(&si.params), &param_map(&ti.params)) {
            diffs.push(format!("{label} param {d}"));
        }
    }
}

/// Key-value pairs as a map; values that hold a JSON object or array (an
/// index's `params`) are parsed so that key order does not matter.
pub(super) fn param_map(kv: &[KeyValuePair]) -> BTreeMap<String, Value> {
    kv.iter()
        .map(|p| {
            let v = p.value.trim_start();
            let parsed = if v.starts_with('{') || v.starts_with('[') {
                serde_json::from_str(&p.value).ok()
            } else {
                None
            };
            (
                p.key.clone(),
                parsed.unwrap_or_else(|| Value::String(p.value.clone())),
            )
        })
        .collect()
}

/// The keys whose values differ: `key (source X, target Y)`, "absent" for
/// a key one side lacks. JSON object values compare regardless of key order.
pub(super) fn map_diff(s: &BTreeMap<String, Value>, t: &BTreeMap<String, Value>) -> Vec<String> {
    zip_maps(s, t)
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(k, a, b)| both(k, shown(a), shown(b)))
        .collect()
}

pub(super) fn shown(v: Option<&Value>) -> String {
    match v {
        None => "absent".into(),
        Some(Value::String(s)) => quoted(s),
        Some(v) => short(v),
    }
}

pub(super) fn quoted(s: &str) -> String {
    format!("{s:?}")
}

pub(super) fn type_name(t: i32) -> String {
    DataType::try_from(t)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| t.to_string())
}

pub(super) fn consistency_name(c: i32) -> String {
    ConsistencyLevel::try_from(c)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| c.to_string())
}

pub(super) fn load_name(l: i32) -> &'static str {
    match LoadState::try_from(l) {
        Ok(LoadState::NotExist) => "not exist",
        Ok(LoadState::NotLoad) => "not loaded",
        Ok(LoadState::Loading) => "loading",
        Ok(LoadState::Loaded) => "loaded",
        Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(k: &str, v: &str) -> KeyValuePair {
        KeyValuePair {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn param_maps_ignore_key_order() {
        let a = param_map(&[
            kv("index_type", "HNSW"),
            kv("metric_type", "L2"),
            kv("params", r#"{"M":"16","efConstruction":"200"}"#),
        ]);
        let b = param_map(&[
            kv("params", r#"{"efConstruction": "200", "M": "16"}"#),
            kv("metric_type", "L2"),
            kv("index_type", "HNSW"),
        ]);
        assert!(map_diff(&a, &b).is_empty());
        let c = param_map(&[
            kv("index_type", "HNSW"),
            kv("params", r#"{"M":"8","efConstruction":"200"}"#),
        ]);
        assert_eq!(
            map_diff(&a, &c),
            vec![
                r#"metric_type (source "L2", target absent)"#.to_string(),
                r#"params (source {"M":"16","efConstruction":"200"}, target {"M":"8","efConstruction":"200"})"#
                    .to_string(),
            ]
        );
        // A value that only looks like JSON stays a string.
        assert_eq!(param_map(&[kv("x", "{oops")])["x"], json!("{oops"));
    }

    #[test]
    fn index_comparison() {
        let idx = |name: &str, field: &str, metric: &str| pb::IndexDescription {
            index_name: name.into(),
            field_name: field.into(),
            params: vec![kv("index_type", "FLAT"), kv("metric_type", metric)],
            ..Default::default()
        };
        let mut d = Vec::new();
        compare_indexes(
            &[idx("v", "v", "L2"), idx("s", "s", "L2")],
            &[idx("v", "v", "IP"), idx("w", "w", "L2")],
            &mut d,
        );
        assert_eq!(
            d,
            vec![
                r#"index "s" on field s (source present, target missing)"#,
                r#"index "v" param metric_type (source "L2", target "IP")"#,
                r#"index "w" on field w (source missing, target present)"#,
            ]
        );
    }

    fn field(name: &str, dt: DataType, params: &[(&str, &str)]) -> FieldSchema {
        FieldSchema {
            field_id: 100,
            name: name.into(),
            data_type: dt as i32,
            type_params: params.iter().map(|(k, v)| kv(k, v)).collect(),
            ..Default::default()
        }
    }

    fn meta(fields: Vec<FieldSchema>) -> CollectionMeta {
        CollectionMeta {
            desc: pb::DescribeCollectionResponse {
                schema: Some(CollectionSchema {
                    name: "c".into(),
                    fields,
                    enable_dynamic_field: true,
                    ..Default::default()
                }),
                shards_num: 2,
                properties: vec![kv("collection.ttl.seconds", "60")],
                ..Default::default()
            },
            partitions: vec!["_default".into()],
            load: LoadState::Loaded as i32,
            ..Default::default()
        }
    }

    #[test]
    fn replica_deviations_are_not_differences() {
        let mut pk = field("id", DataType::Int64, &[]);
        pk.is_primary_key = true;
        pk.auto_id = true;
        let rowid = FieldSchema {
            field_id: 0,
            ..field("RowID", DataType::Int64, &[])
        };
        let dynamic = FieldSchema {
            is_dynamic: true,
            ..field("$meta", DataType::Json, &[])
        };
        let v = field("v", DataType::FloatVector, &[("dim", "4")]);
        let s = meta(vec![rowid, pk.clone(), v.clone(), dynamic]);
        let mut t = meta(vec![
            FieldSchema {
                auto_id: false,
                ..pk
            },
            v,
        ]);
        t.desc.properties.push(kv(SOURCE_ID_PROPERTY, "4455"));
        let (mut d, mut n) = (Vec::new(), Vec::new());
        compare_meta(&s, &t, &mut d, &mut n);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(n.len(), 1);
        assert!(n[0].contains("auto_id"));
    }

    #[test]
    fn schema_and_collection_differences() {
        let mut pk = field("id", DataType::Int64, &[]);
        pk.is_primary_key = true;
        let s = meta(vec![
            pk.clone(),
            field("v", DataType::FloatVector, &[("dim", "4")]),
            field("s", DataType::VarChar, &[("max_length", "64")]),
        ]);
        let mut t = meta(vec![
            pk,
            field("v", DataType::FloatVector, &[("dim", "8")]),
            field("s", DataType::Int32, &[]),
            field("x", DataType::Bool, &[]),
        ]);
        t.desc.shards_num = 1;
        t.desc.properties.clear();
        t.desc.aliases = vec!["al".into()];
        t.partitions.push("p1".into());
        t.load = LoadState::NotLoad as i32;
        let (mut d, mut n) = (Vec::new(), Vec::new());
        compare_meta(&s, &t, &mut d, &mut n);
        assert_eq!(
            d,
            vec![
                r#"field "x" (source missing, target present)"#,
                "field v type param dim (source \"4\", target \"8\")",
                "field s data_type (source VarChar, target Int32)",
                "field s type param max_length (source \"64\", target absent)",
                "shards_num (source 2, target 1)",
                "property collection.ttl.seconds (source \"60\", target absent)",
                r#"partition "p1" (source missing, target present)"#,
                r#"alias "al" (source missing, target present)"#,
                "load state (source loaded, target not loaded)",
            ]
        );
        assert!(n.is_empty());
    }

    #[test]
    fn field_order_is_compared() {
        let s = meta(vec![
            field("a", DataType::Bool, &[]),
            field("b", DataType::Bool, &[]),
        ]);
        let t = meta(vec![
            field("b", DataType::Bool, &[]),
            field("a", DataType::Bool, &[]),
        ]);
        let (mut d, mut n) = (Vec::new(), Vec::new());
        compare_meta(&s, &t, &mut d, &mut n);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("field order"));
    }
}

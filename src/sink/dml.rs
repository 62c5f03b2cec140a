//! Rows: upserts keyed by the source's primary key, deletes by key.

use super::{Applied, MilvusSink, TargetCollectionRef};
use crate::{
    milvus::MilvusError,
    proto::{
        milvus as pb,
        schema::{self, FieldData},
    },
};

/// Largest number of primary keys in one delete expression.
const DELETE_CHUNK: usize = 5_000;

impl MilvusSink {
    /// Upserts rows (the columns of one or more source inserts).
    pub async fn upsert(
        &self,
        db: &str,
        collection: &TargetCollectionRef<'_>,
        partition: &str,
        fields_data: Vec<FieldData>,
        num_rows: u32,
    ) -> Result<Applied, MilvusError> {
        let partition_name = if collection.meta.has_partition_key || partition == "_default" {
            String::new()
        } else {
            partition.to_string()
        };
        self.touch(db, collection.name);
        self.target
            .call(pb::UpsertRequest {
                db_name: db.to_string(),
                collection_name: collection.name.to_string(),
                partition_name,
                fields_data,
                num_rows,
                ..Default::default()
            })
            .await?;
        Ok(Applied::Done)
    }

    /// Deletes rows by primary key, in `partition` ("" = every partition;
    /// always every partition when a partition key routes the rows).
    pub async fn delete(
        &self,
        db: &str,
        collection: &TargetCollectionRef<'_>,
        partition: &str,
        keys: &PrimaryKeys,
    ) -> Result<Applied, MilvusError> {
        let partition_name = if collection.meta.has_partition_key {
            String::new()
        } else {
            partition.to_string()
        };
        self.touch(db, collection.name);
        for expr in keys.exprs(&collection.meta.pk_field, DELETE_CHUNK) {
            self.target
                .call(pb::DeleteRequest {
                    db_name: db.to_string(),
                    collection_name: collection.name.to_string(),
                    partition_name: partition_name.clone(),
                    expr,
                    ..Default::default()
                })
                .await?;
        }
        Ok(Applied::Done)
    }
}

/// Primary keys of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryKeys {
    /// Int64 keys.
    Int(Vec<i64>),
    /// VarChar keys.
    Str(Vec<String>),
}

impl PrimaryKeys {
    /// Keys of a source delete message.
    pub fn from_ids(ids: Option<&schema::IDs>, legacy: &[i64]) -> Self {
        match ids.and_then(|i| i.id_field.as_ref()) {
            Some(schema::i_ds::IdField::IntId(l)) => PrimaryKeys::Int(l.data.clone()),
            Some(schema::i_ds::IdField::StrId(s)) => PrimaryKeys::Str(s.data.clone()),
            None => PrimaryKeys::Int(legacy.to_vec()),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        match self {
            PrimaryKeys::Int(v) => v.len(),
            PrimaryKeys::Str(v) => v.len(),
        }
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `pk in [...]` expressions of at most `chunk` keys each.
    pub fn exprs(&self, pk_field: &str, chunk: usize) -> Vec<String> {
        match self {
            PrimaryKeys::Int(v) => v
                .chunks(chunk.max(1))
                .map(|c| {
                    let list: Vec<String> = c.iter().map(i64::to_string).collect();
                    format!("{pk_field} in [{}]", list.join(","))
                })
                .collect(),
            PrimaryKeys::Str(v) => v
                .chunks(chunk.max(1))
                .map(|c| {
                    let list: Vec<String> = c.iter().map(|s| quote(s)).collect();
                    format!("{pk_field} in [{}]", list.join(","))
                })
                .collect(),
        }
    }
}

/// A Milvus expression string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_exprs() {
        let k = PrimaryKeys::Int(vec![1, 2, 3]);
        assert_eq!(k.exprs("id", 2), vec!["id in [1,2]", "id in [3]"]);
        let k = PrimaryKeys::Str(vec!["a\"b".into(), "c\\".into()]);
        assert_eq!(k.exprs("pk", 10), vec![r#"pk in ["a\"b","c\\"]"#]);
    }
}

//! Changes made through an alias. Milvus 2.3.5 writes an index, load or
//! release that a client made through an alias to the replicate channel
//! with the alias as the collection name. The target's aliases follow the
//! source's only through the reconciler (`replicate.reconcile_interval`),
//! so applying the change by that name would miss (a new alias the target
//! lacks yet) or land on another collection (an alias moved since). The
//! source resolves the name instead: its `DescribeCollection` of an alias
//! answers with the collection's own name in the schema and its id, and
//! the change goes to the target collection that replicates that id
//! (renames followed, see [`Catalog::resolve`]).

use tracing::info;

use super::{Catalog, Entry};
use crate::{milvus::MilvusError, proto::milvus as pb};

/// The source collection `(id, name)` that `name` is an alias of, going by
/// the source's description of `name`; None when it is the collection's
/// own name (or the description has no schema).
fn aliased(name: &str, desc: &pb::DescribeCollectionResponse) -> Option<(i64, String)> {
    let real = desc.schema.as_ref().map(|s| s.name.as_str())?;
    (!real.is_empty() && real != name).then(|| (desc.collection_id, real.to_string()))
}

impl Catalog {
    /// The `(database, name)` to apply a change that names `db.name` by,
    /// when `name` is an alias on the source: the target collection that
    /// replicates the aliased collection, or the source collection's own
    /// name when the task does not replicate it (so that the change is
    /// ignored). None when `name` is no alias, the source no longer has
    /// it, or its collection is gone: the change is applied by its name,
    /// as before.
    pub async fn dealias(
        &self,
        db: &str,
        name: &str,
    ) -> Result<Option<(String, String)>, MilvusError> {
        let Some(desc) = self.describe_source(db, name).await? else {
            return Ok(None);
        };
        let Some((id, real)) = aliased(name, &desc) else {
            return Ok(None);
        };
        match self.resolve(id).await? {
            Entry::Live(live) => {
                info!(alias = %name, collection = %live.name, db = %live.db, source_id = id, "change made through an alias: applied to its collection");
                Ok(Some((live.db.clone(), live.name.clone())))
            }
            Entry::Excluded => Ok(Some((db.to_string(), real))),
            Entry::Dropped => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::schema::CollectionSchema;

    fn described(id: i64, schema_name: &str) -> pb::DescribeCollectionResponse {
        pb::DescribeCollectionResponse {
            collection_id: id,
            collection_name: "ignored".into(),
            schema: Some(CollectionSchema {
                name: schema_name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_alias_resolves_to_its_collection() {
        // 2.3.5 describes an alias with the collection's own schema.
        assert_eq!(
            aliased("hot", &described(447, "events_v2")),
            Some((447, "events_v2".to_string()))
        );
    }

    #[test]
    fn a_collection_name_is_left_unchanged() {
        assert_eq!(aliased("events_v2", &described(447, "events_v2")), None);
        // No schema to go by: applied by its name, as before.
        let bare = pb::DescribeCollectionResponse {
            collection_id: 447,
            ..Default::default()
        };
        assert_eq!(aliased("hot", &bare), None);
    }
}

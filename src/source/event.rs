//! Typed events decoded from the source's message streams. Each carries its
//! [`Position`], so a checkpoint can be taken after any event.

use std::sync::Arc;

use crate::proto::{milvus as mpb, msg, schema};

/// Where an event sits in the source: its channel and the stream's sequence
/// number (for natsmq, the JetStream stream sequence, gap-free per stream
/// while the stream is not purged).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Physical channel name, e.g. `by-dev-rootcoord-dml_3`.
    pub channel: Arc<str>,
    /// Stream sequence number, starting at 1.
    pub sequence: u64,
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Where it was read.
    pub position: Position,
    /// Milvus hybrid timestamp of the message (`MsgBase.timestamp`).
    pub timestamp: u64,
    /// What happened.
    pub kind: EventKind,
}

/// A collection created on the source, with its schema decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateCollection {
    /// The raw message (ids, names, channels).
    pub request: msg::CreateCollectionRequest,
    /// The schema, decoded from `request.schema`.
    pub schema: schema::CollectionSchema,
}

impl CreateCollection {
    /// The collection's name. Milvus 2.3.5 leaves the message's
    /// `collectionName` empty and names the collection in its schema.
    pub fn name(&self) -> &str {
        if self.request.collection_name.is_empty() {
            &self.schema.name
        } else {
            &self.request.collection_name
        }
    }

    /// The user fields of the schema, without Milvus's system fields
    /// (`RowID` and `Timestamp`, field ids 0 and 1).
    pub fn user_fields(&self) -> impl Iterator<Item = &schema::FieldSchema> {
        self.schema
            .fields
            .iter()
            .filter(|f| !crate::milvus::is_system_field(f))
    }
}

/// What an [`Event`] says happened. DML-channel kinds come first, then the
/// replicate channel's.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A collection was created (sent to each of its physical channels).
    CreateCollection(Box<CreateCollection>),
    /// A collection was dropped.
    DropCollection(msg::DropCollectionRequest),
    /// A partition was created.
    CreatePartition(msg::CreatePartitionRequest),
    /// A partition was dropped.
    DropPartition(msg::DropPartitionRequest),
    /// Rows were inserted (an upsert arrives as a delete then an insert).
    Insert(Box<msg::InsertRequest>),
    /// Rows were deleted by primary key.
    Delete(Box<msg::DeleteRequest>),
    /// The channel's clock advanced; nothing else happened.
    TimeTick,
    /// A database was created.
    CreateDatabase(mpb::CreateDatabaseRequest),
    /// A database was dropped.
    DropDatabase(mpb::DropDatabaseRequest),
    /// An index was created.
    CreateIndex(mpb::CreateIndexRequest),
    /// An index was dropped.
    DropIndex(mpb::DropIndexRequest),
    /// A collection was loaded.
    LoadCollection(mpb::LoadCollectionRequest),
    /// A collection was released.
    ReleaseCollection(mpb::ReleaseCollectionRequest),
    /// Partitions were loaded.
    LoadPartitions(mpb::LoadPartitionsRequest),
    /// Partitions were released.
    ReleasePartitions(mpb::ReleasePartitionsRequest),
    /// Collections were flushed.
    Flush(mpb::FlushRequest),
    /// An alias was created.
    CreateAlias(mpb::CreateAliasRequest),
    /// An alias was dropped.
    DropAlias(mpb::DropAliasRequest),
    /// An alias was moved to another collection.
    AlterAlias(mpb::AlterAliasRequest),
    /// A message type this agent does not replicate. Counted and logged by
    /// the reader, passed on so that positions stay continuous.
    Unsupported {
        /// `MsgBase.msg_type`.
        msg_type: i32,
    },
    /// A message that could not be decoded (the reason is kept). Counted
    /// and logged with its position by the reader; never dropped silently.
    Undecodable(String),
}

impl EventKind {
    /// `(database, collection)` of a replicate-channel change that needs its
    /// collection to exist (an index, a load), else None.
    pub fn collection_scoped(&self) -> Option<(&str, &str)> {
        match self {
            EventKind::CreateIndex(r) => Some((&r.db_name, &r.collection_name)),
            EventKind::LoadCollection(r) => Some((&r.db_name, &r.collection_name)),
            EventKind::LoadPartitions(r) => Some((&r.db_name, &r.collection_name)),
            _ => None,
        }
    }

    /// `(database, collection)` of a replicate-channel change that names
    /// its collection as the client did, so perhaps by an alias (an index,
    /// a load or a release), else None.
    pub fn client_named(&self) -> Option<(&str, &str)> {
        match self {
            EventKind::CreateIndex(r) => Some((&r.db_name, &r.collection_name)),
            EventKind::DropIndex(r) => Some((&r.db_name, &r.collection_name)),
            EventKind::LoadCollection(r) => Some((&r.db_name, &r.collection_name)),
            EventKind::ReleaseCollection(r) => Some((&r.db_name, &r.collection_name)),
            EventKind::LoadPartitions(r) => Some((&r.db_name, &r.collection_name)),
            EventKind::ReleasePartitions(r) => Some((&r.db_name, &r.collection_name)),
            _ => None,
        }
    }

    /// Points a [`client_named`](Self::client_named) change at collection
    /// `db.name` instead (a change made through an alias, applied to its
    /// collection); other changes are left as they are.
    pub fn redirect(&mut self, db: String, name: String) {
        if let Some((db_name, collection_name)) = self.client_named_mut() {
            *db_name = db;
            *collection_name = name;
        }
    }

    /// [`client_named`](Self::client_named), to rewrite the names.
    fn client_named_mut(&mut self) -> Option<(&mut String, &mut String)> {
        match self {
            EventKind::CreateIndex(r) => Some((&mut r.db_name, &mut r.collection_name)),
            EventKind::DropIndex(r) => Some((&mut r.db_name, &mut r.collection_name)),
            EventKind::LoadCollection(r) => Some((&mut r.db_name, &mut r.collection_name)),
            EventKind::ReleaseCollection(r) => Some((&mut r.db_name, &mut r.collection_name)),
            EventKind::LoadPartitions(r) => Some((&mut r.db_name, &mut r.collection_name)),
            EventKind::ReleasePartitions(r) => Some((&mut r.db_name, &mut r.collection_name)),
            _ => None,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::CreateCollection(_) => "create_collection",
            EventKind::DropCollection(_) => "drop_collection",
            EventKind::CreatePartition(_) => "create_partition",
            EventKind::DropPartition(_) => "drop_partition",
            EventKind::Insert(_) => "insert",
            EventKind::Delete(_) => "delete",
            EventKind::TimeTick => "time_tick",
            EventKind::CreateDatabase(_) => "create_database",
            EventKind::DropDatabase(_) => "drop_database",
            EventKind::CreateIndex(_) => "create_index",
            EventKind::DropIndex(_) => "drop_index",
            EventKind::LoadCollection(_) => "load_collection",
            EventKind::ReleaseCollection(_) => "release_collection",
            EventKind::LoadPartitions(_) => "load_partitions",
            EventKind::ReleasePartitions(_) => "release_partitions",
            EventKind::Flush(_) => "flush",
            EventKind::CreateAlias(_) => "create_alias",
            EventKind::DropAlias(_) => "drop_alias",
            EventKind::AlterAlias(_) => "alter_alias",
            EventKind::Unsupported { .. } => "unsupported",
            EventKind::Undecodable(_) => "undecodable",
        }
    }
}

/// Milliseconds since the Unix epoch of a Milvus hybrid timestamp (the
/// physical part is the high bits, the low 18 bits are a logical counter).
pub fn physical_ms(ts: u64) -> u64 {
    ts >> 18
}

//! Generated types for the vendored Milvus protos (milvus-proto v2.3.5).
//!
//! `milvus::milvus_service_client::MilvusServiceClient` is the tonic client of the
//! public Milvus API; `msg` holds the msgstream messages that Milvus writes to its
//! message queue (inserts, deletes, DDL, time ticks).
#![allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]

/// `milvus.proto.common`: shared enums (`MsgType`, `ErrorCode`), `MsgBase`, `Status`.
pub mod common {
    tonic::include_proto!("milvus.proto.common");
}
/// `milvus.proto.schema`: collection schemas and column data.
pub mod schema {
    tonic::include_proto!("milvus.proto.schema");
}
/// `milvus.proto.feder`: federation helpers referenced by `milvus.proto.milvus`.
pub mod feder {
    tonic::include_proto!("milvus.proto.feder");
}
/// `milvus.proto.msg`: msgstream payloads (insert, delete, DDL, time tick).
pub mod msg {
    tonic::include_proto!("milvus.proto.msg");
}
/// `milvus.proto.milvus`: the public `MilvusService` and its requests.
pub mod milvus {
    tonic::include_proto!("milvus.proto.milvus");
}

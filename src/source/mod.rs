//! Reading the source Milvus: its message-queue streams (one ordered reader
//! per physical DML channel plus the replicate channel) decoded into typed,
//! positioned events.

pub mod natsmq;

//! Reading the source Milvus: its message-queue streams (one ordered reader
//! per physical DML channel plus the replicate channel) decoded into typed,
//! positioned events.
//!
//! - [`mq`]: the [`mq::MessageQueue`] trait (positions, start points);
//! - [`natsmq`]: its NATS JetStream implementation;
//! - [`decode`] and [`event`]: payload bytes to typed [`event::Event`]s;
//! - [`reader`]: one resilient, ordered reader per channel.

pub mod decode;
pub mod event;
pub mod inspect;
pub mod mq;
pub mod natsmq;
pub mod reader;

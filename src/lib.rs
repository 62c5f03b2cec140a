//! milvus-cdc: a highly available change-data-capture agent for Milvus.
//!
//! Replicas elect a leader through an etcd lease; the leader runs the
//! replication workers (source reader → engine → sink) and serves
//! the `/cdc` task API of the official milvus-cdc; followers forward to it.
//!
//! Where things live: [`config`] (settings), [`api`] (HTTP), [`task`] (task
//! records and state machine), [`store`] (etcd task store and checkpoints),
//! [`source`] (reading the source's message streams), [`replicate`] (the
//! engine), [`milvus`] (the client of any Milvus, source or target),
//! [`sink`] (writing changes to the target Milvus), [`verify`], [`check`],
//! [`metrics`], [`server`] (wiring).
#![warn(missing_docs)]

pub mod api;
pub mod backoff;
pub mod check;
pub mod cli;
pub mod config;
pub mod error_text;
pub mod ha;
pub mod metrics;
pub mod milvus;
pub mod proto;
pub mod replicate;
pub mod server;
pub mod sink;
pub mod source;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod tls;
pub mod verify;

//! Reading the source Milvus: its message-queue streams (one ordered reader
//! per physical DML channel plus the replicate channel) decoded into typed,
//! positioned events.
//!
//! - [`mq`]: the [`mq::MessageQueue`] trait (positions, start points);
//! - [`natsmq`], [`kafka`], [`pulsar`]: its NATS JetStream, Kafka and
//!   Pulsar implementations, chosen by [`open_queue`];
//! - [`decode`] and [`event`]: payload bytes to typed [`event::Event`]s;
//! - [`reader`]: one resilient, ordered reader per channel.

pub mod budget;
pub mod decode;
pub mod event;
pub mod health;
pub mod inspect;
pub mod kafka;
pub mod mq;
pub mod natsmq;
pub mod position;
pub mod pulsar;
pub mod reader;

use std::sync::Arc;

use crate::config::{MqType, SourceConfig};

/// The source's message queue as configured. `lazy`: connect in the
/// background (a server starts while the queue is down); otherwise fail
/// unless it answers within `source.connect_timeout`.
pub async fn open_queue(
    cfg: &SourceConfig,
    lazy: bool,
) -> Result<Arc<dyn mq::MessageQueue>, mq::MqError> {
    let timeout = cfg.connect_timeout;
    Ok(match (cfg.mq_type, lazy) {
        (MqType::Natsmq, true) => {
            Arc::new(natsmq::NatsMq::connect_lazy(&cfg.nats_url, timeout).await?)
        }
        (MqType::Natsmq, false) => Arc::new(natsmq::NatsMq::connect(&cfg.nats_url, timeout).await?),
        (MqType::Kafka, true) => Arc::new(kafka::KafkaMq::new(&cfg.kafka, timeout)?),
        (MqType::Kafka, false) => Arc::new(kafka::KafkaMq::connect(&cfg.kafka, timeout).await?),
        (MqType::Pulsar, true) => Arc::new(
            pulsar::PulsarMq::new(&cfg.pulsar, timeout)?.with_known_channels(known_channels(cfg)),
        ),
        (MqType::Pulsar, false) => {
            Arc::new(pulsar::PulsarMq::connect(&cfg.pulsar, timeout, known_channels(cfg)).await?)
        }
    })
}

/// The configured DML channels and the replicate channel.
fn known_channels(cfg: &SourceConfig) -> Vec<String> {
    let mut channels = cfg.dml_channels();
    channels.push(cfg.replicate_channel());
    channels
}

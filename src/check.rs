//! `milvus-cdc check`: connects to every dependency of the configuration (the
//! agent's etcd, the source's message queue and Milvus, optionally a target Milvus)
//! and reports what answered, so a wrong address shows up before `serve`.

use std::fmt::Write as _;

use crate::{
    config::Config, config::MqType, milvus::MilvusClient, source::open_queue, store,
    task::MilvusConnectParam,
};

/// One dependency's result.
#[derive(Debug)]
pub struct CheckLine {
    /// What was checked.
    pub what: String,
    /// `Ok(details)` or `Err(reason)`.
    pub result: Result<String, String>,
}

/// Checks every dependency; `target` is an optional target Milvus URI with
/// its optional token.
pub async fn run(
    cfg: &Config,
    target: Option<&str>,
    target_token: Option<String>,
) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let etcd = match store::connect(&cfg.etcd).await {
        Ok(mut c) => match c.status().await {
            Ok(s) => Ok(format!(
                "etcd {} reachable, version {}",
                cfg.etcd.endpoints.join(","),
                s.version()
            )),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    lines.push(CheckLine {
        what: "etcd".into(),
        result: etcd,
    });
    let prefix = format!("{}-", cfg.source.channel_prefix);
    let queue = match open_queue(&cfg.source, false).await {
        Ok(mq) => match mq.channels(&prefix).await {
            Ok(names) if cfg.source.mq_type == MqType::Pulsar => {
                pulsar_holds_messages(&*mq, &cfg.source.pulsar.topic_prefix(), &names)
                    .await
                    .map(|()| names)
            }
            r => r.map_err(|e| e.to_string()),
        }
        .map(|names| {
            let mut s = format!("{} streams with prefix {prefix}:", names.len());
            for n in names {
                let _ = write!(s, " {n}");
            }
            s
        }),
        Err(e) => Err(e.to_string()),
    };
    lines.push(CheckLine {
        what: match cfg.source.mq_type {
            MqType::Natsmq => "source natsmq".into(),
            MqType::Kafka => "source kafka".into(),
            MqType::Pulsar => "source pulsar".into(),
        },
        result: queue,
    });
    lines.push(CheckLine {
        what: "source milvus".into(),
        result: milvus(
            &cfg.source.milvus_uri,
            cfg.source.milvus_token.clone(),
            cfg.source.connect_timeout.as_secs().max(1),
        )
        .await,
    });
    if let Some(uri) = target {
        lines.push(CheckLine {
            what: "target milvus".into(),
            result: milvus(
                uri,
                target_token,
                cfg.source.connect_timeout.as_secs().max(1),
            )
            .await,
        });
    }
    lines
}

/// A Pulsar broker creates whatever topic it is asked for (pulsar-lite in
/// any namespace; Apache Pulsar with `allowAutoTopicCreation` in an
/// existing one), so a wrong tenant, namespace or channel prefix would look
/// like a source without data: fails unless one of the channels' topics
/// holds a message (a Milvus that never had a collection fails too, and is
/// told so).
async fn pulsar_holds_messages(
    mq: &dyn crate::source::mq::MessageQueue,
    topic_prefix: &str,
    names: &[String],
) -> Result<(), String> {
    for n in names {
        match mq.info(n).await {
            Ok(info) if info.last_sequence > 0 => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!(
        "none of the {} topics {topic_prefix}<channel> holds a message: a wrong \
         source.pulsar.tenant/namespace or source.channel_prefix (or a Milvus that never had a \
         collection)",
        names.len()
    ))
}

async fn milvus(uri: &str, token: Option<String>, timeout_secs: u64) -> Result<String, String> {
    let param = MilvusConnectParam {
        uri: Some(uri.to_string()),
        token,
        connect_timeout: Some(timeout_secs),
        ..Default::default()
    };
    let addr = param.validate().map_err(|e| e.to_string())?;
    let target = MilvusClient::connect(&addr)
        .await
        .map_err(|e| e.to_string())?;
    let version = target.version().await.map_err(|e| e.to_string())?;
    let collections = target.probe().await.map_err(|e| e.to_string())?;
    Ok(format!(
        "{uri} version {version}, {} collections: {}",
        collections.len(),
        collections.join(",")
    ))
}

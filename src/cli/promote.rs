//! `milvus-cdc promote TASK_ID`: fail over a task's target. Sends the
//! `promote` extension request to any replica: the leader pauses the task,
//! turns its replicas on the target into owned collections and answers the
//! source positions the task reached and the `create` body of the reverse
//! task. Prints that body (to send to an agent whose source is the promoted
//! cluster, e.g. `curl -d @reverse.json`), the rest on stderr.

use std::process::ExitCode;

use bytes::Bytes;
use serde_json::Value;

use super::{
    http::{emit, fail, interpret, post_cdc, Reply},
    ServerArgs, EXIT_API_ERROR, EXIT_OK,
};

/// Extra time a promote gets on top of `--timeout` (it pauses the task,
/// then rewrites every replica on the target).
const PROMOTE_EXTRA: std::time::Duration = std::time::Duration::from_secs(120);

/// `milvus-cdc promote`.
#[derive(clap::Args, Debug, Clone)]
pub struct PromoteArgs {
    /// The task whose target takes over (32 hexadecimal characters).
    #[arg(value_name = "TASK_ID")]
    pub task_id: String,
    /// Server and output options.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// What a promote answer says, for people (stderr); stdout gets the reverse
/// task's `create` body.
fn summary(data: &Value) -> String {
    let mut out = String::new();
    let promoted: Vec<&str> = data["promoted"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str(&format!(
        "task {} paused; {} collection(s) promoted on {}: {}\n",
        data["task_id"].as_str().unwrap_or("?"),
        promoted.len(),
        data["target"].as_str().unwrap_or("?"),
        if promoted.is_empty() {
            "none".to_string()
        } else {
            promoted.join(", ")
        }
    ));
    out.push_str("source positions reached (keep them to resume the old direction later):\n");
    for p in data["positions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}  tt={}  msg_id={}\n",
            p["channel_name"].as_str().unwrap_or("?"),
            p["tt"],
            p["msg_id"].as_str().unwrap_or("?")
        ));
    }
    out.push_str(
        "the reverse task (stdout): add the old source's credentials, then POST it to an agent \
         whose source is the promoted cluster",
    );
    out
}

/// Runs `milvus-cdc promote`.
pub async fn run_promote(args: PromoteArgs) -> ExitCode {
    let timeout = std::time::Duration::from_secs(args.server.timeout.max(1)) + PROMOTE_EXTRA;
    let body = serde_json::json!({
        "request_type": "promote",
        "request_data": {"task_id": args.task_id},
    });
    let hint = "the promote may have happened: check with `milvus-cdc task get`";
    let answer = match post_cdc(
        &args.server,
        timeout,
        Bytes::from(body.to_string()),
        Some(hint),
    )
    .await
    {
        Ok(a) => a,
        Err(code) => return code,
    };
    match interpret(answer.status, &answer.body) {
        Reply::Ok(data) => {
            if args.server.json {
                emit(&String::from_utf8_lossy(&answer.body));
            } else {
                eprintln!("{}", summary(&data));
                emit(&serde_json::to_string_pretty(&data["reverse_task"]).unwrap_or_default());
            }
            ExitCode::from(EXIT_OK)
        }
        Reply::Error { code, message } => {
            if args.server.json {
                emit(&String::from_utf8_lossy(&answer.body));
            }
            fail(EXIT_API_ERROR, &format!("error {code}: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_what_was_promoted() {
        let data = serde_json::json!({
            "task_id": "ab", "target": "http://b:19530", "promoted": ["default.c1", "d.c2"],
            "positions": [{"channel_name": "by-dev-rootcoord-dml_0", "tt": 42, "msg_id": "AQ=="}],
            "reverse_task": {}});
        let s = summary(&data);
        assert!(
            s.contains("2 collection(s) promoted on http://b:19530: default.c1, d.c2"),
            "{s}"
        );
        assert!(
            s.contains("by-dev-rootcoord-dml_0  tt=42  msg_id=AQ=="),
            "{s}"
        );
    }
}

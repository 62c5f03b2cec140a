//! `milvus-cdc task …`: one `/cdc` request, its answer as a table or lines.

use std::{fmt::Write as _, process::ExitCode};

use bytes::Bytes;
use serde_json::Value;

use super::{
    http::{emit, fail, interpret, post_cdc, Reply},
    TaskCommand, EXIT_API_ERROR, EXIT_OK,
};

/// Left-aligned columns separated by two spaces, with a header line.
pub(super) fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(cur) => *cur = (*cur).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| (*h).to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The target of a task as one short text: its URI (or `host:port`), with
/// the user name and TLS when set. Secrets are never in the API's answers.
fn target_text(param: &Value) -> String {
    let mut t = match (str_field(param, "uri"), str_field(param, "host")) {
        (Some(uri), _) => uri.to_string(),
        (None, Some(host)) => match param.get("port").and_then(Value::as_u64) {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        },
        (None, None) => "-".to_string(),
    };
    if let Some(user) = str_field(param, "username") {
        let _ = write!(t, " (user {user})");
    }
    if param.get("enable_tls").and_then(Value::as_bool) == Some(true) {
        t.push_str(" (tls)");
    }
    t
}

fn collections_text(infos: Option<&Value>) -> String {
    let names: Vec<&str> = infos
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| str_field(c, "name")).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// The `list` answer's tasks as a table.
fn format_task_list(tasks: &[Value]) -> String {
    if tasks.is_empty() {
        return "no tasks\n".into();
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let param = t
                .get("milvus_connect_param")
                .cloned()
                .unwrap_or(Value::Null);
            vec![
                str_field(t, "task_id").unwrap_or("-").to_string(),
                str_field(t, "state").unwrap_or("-").to_string(),
                target_text(&param),
                collections_text(t.get("collection_infos")),
            ]
        })
        .collect();
    format_table(&["TASK ID", "STATE", "TARGET", "COLLECTIONS"], &rows)
}

/// The `get` answer's task as `key: value` lines.
fn format_task_detail(task: &Value) -> String {
    let param = task
        .get("milvus_connect_param")
        .cloned()
        .unwrap_or(Value::Null);
    let mut lines: Vec<(&str, String)> = vec![
        ("task id", str_field(task, "task_id").unwrap_or("-").into()),
        ("state", str_field(task, "state").unwrap_or("-").into()),
        ("target", target_text(&param)),
    ];
    if let Some(t) = param.get("connect_timeout").and_then(Value::as_u64) {
        lines.push(("connect timeout", format!("{t}s")));
    }
    lines.push((
        "collections",
        collections_text(task.get("collection_infos")),
    ));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in lines {
        let key = format!("{k}:");
        let _ = writeln!(out, "{key:<width$}  {v}");
    }
    out
}

/// The `position` answer's checkpoints as a table: channel, the source
/// timestamp reached (and its time, ms since the epoch) and the base64
/// position that can start a new task.
fn format_positions(positions: &[Value]) -> String {
    if positions.is_empty() {
        return "no checkpoint yet\n".into();
    }
    let number = |p: &Value, key: &str| {
        p.get(key)
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_string(), |n| n.to_string())
    };
    let rows: Vec<Vec<String>> = positions
        .iter()
        .map(|p| {
            vec![
                str_field(p, "channel_name").unwrap_or("-").to_string(),
                number(p, "tt"),
                number(p, "time"),
                str_field(p, "msg_id").unwrap_or("-").to_string(),
            ]
        })
        .collect();
    format_table(&["CHANNEL", "TT", "TIME (MS)", "POSITION"], &rows)
}

/// Seconds as a short duration: `0.4s`, `59.0s`, `5m03s`, `2h01m`, `-`.
pub(super) fn format_secs(secs: Option<f64>) -> String {
    let Some(s) = secs.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".into();
    };
    if s < 120.0 {
        return format!("{s:.1}s");
    }
    // Whole seconds from here on; the value is finite and non-negative.
    let total = s.round() as u64;
    if total < 3600 {
        format!("{}m{:02}s", total / 60, total % 60)
    } else {
        format!("{}h{:02}m", total / 3600, (total % 3600) / 60)
    }
}

/// The human answer of a successful request.
fn format_reply(cmd: &TaskCommand, data: &Value) -> String {
    match cmd {
        TaskCommand::Create(_) => match str_field(data, "task_id") {
            Some(id) => format!("{id}\n"),
            None => format!("{data}\n"),
        },
        TaskCommand::List(_) => match data.get("tasks").and_then(Value::as_array) {
            Some(tasks) => format_task_list(tasks),
            None => format!("{data}\n"),
        },
        TaskCommand::Get(_) => match data.get("Task") {
            Some(task) => format_task_detail(task),
            None => format!("{data}\n"),
        },
        TaskCommand::Pause(a) => format!("task {} paused\n", a.task_id),
        TaskCommand::Resume(a) => format!("task {} running\n", a.task_id),
        TaskCommand::Delete(a) => format!("task {} deleted\n", a.task_id),
        TaskCommand::Position(_) => match data.get("positions").and_then(Value::as_array) {
            Some(positions) => format_positions(positions),
            None => format!("{data}\n"),
        },
    }
}

// ---------------------------------------------------------------- task

/// Runs a `task` subcommand: sends its request to the first `--server` that
/// accepts a connection and prints the answer. Exit code 0 on success, 1 if
/// the server answered with an error (code and message on stderr), 2 for a
/// bad `--server`, 3 if no server answered.
pub async fn run_task(cmd: TaskCommand) -> ExitCode {
    let args = cmd.server();
    let hint = matches!(cmd, TaskCommand::Create(_))
        .then_some("the task may have been created anyway: check with `milvus-cdc task list`");
    let body = Bytes::from(cmd.body().to_string());
    let answer = match post_cdc(args, cmd.timeout(), body, hint).await {
        Ok(a) => a,
        Err(code) => return code,
    };
    match interpret(answer.status, &answer.body) {
        Reply::Ok(data) => {
            if args.json {
                emit(&String::from_utf8_lossy(&answer.body));
            } else {
                emit(&format_reply(&cmd, &data));
            }
            ExitCode::from(EXIT_OK)
        }
        Reply::Error { code, message } => {
            if args.json {
                emit(&String::from_utf8_lossy(&answer.body));
            }
            fail(EXIT_API_ERROR, &format!("error {code}: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align() {
        let t = format_table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["xxxx".into(), "y".into(), "".into()],
                vec!["z".into(), "w".into(), "v".into()],
            ],
        );
        assert_eq!(t, "A     LONG HEADER  C\nxxxx  y\nz     w            v\n");
    }

    #[test]
    fn task_list_table() {
        let tasks = vec![
            json!({"task_id": "0123456789abcdef0123456789abcdef", "state": "Running",
                   "milvus_connect_param": {"uri": "http://t:19530", "connect_timeout": 10},
                   "collection_infos": [{"name": "*"}]}),
            json!({"task_id": "fedcba9876543210fedcba9876543210", "state": "Paused",
                   "milvus_connect_param": {"host": "10.0.0.7", "port": 19530,
                                            "username": "cdc", "enable_tls": true},
                   "collection_infos": [{"name": "*"}]}),
        ];
        let text = format_task_list(&tasks);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "TASK ID                           STATE    TARGET                           COLLECTIONS"
        );
        assert_eq!(
            lines[1],
            "0123456789abcdef0123456789abcdef  Running  http://t:19530                   *"
        );
        assert_eq!(
            lines[2],
            "fedcba9876543210fedcba9876543210  Paused   10.0.0.7:19530 (user cdc) (tls)  *"
        );
        assert_eq!(format_task_list(&[]), "no tasks\n");
    }

    #[test]
    fn task_detail_lines() {
        let task = json!({"task_id": "0123456789abcdef0123456789abcdef", "state": "Running",
                          "milvus_connect_param": {"uri": "http://t:19530", "connect_timeout": 10},
                          "collection_infos": [{"name": "*"}]});
        assert_eq!(
            format_task_detail(&task),
            "task id:          0123456789abcdef0123456789abcdef\n\
             state:            Running\n\
             target:           http://t:19530\n\
             connect timeout:  10s\n\
             collections:      *\n"
        );
    }

    #[test]
    fn positions_table() {
        let positions = vec![
            json!({"channel_name": "by-dev-rootcoord-dml_0", "msg_id": "CgE=",
                   "tt": 470846457935298561u64, "time": 1795641192566u64}),
            json!({"channel_name": "by-dev-rootcoord-dml_1"}),
        ];
        let text = format_positions(&positions);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "CHANNEL                 TT                  TIME (MS)      POSITION",
                "by-dev-rootcoord-dml_0  470846457935298561  1795641192566  CgE=",
                "by-dev-rootcoord-dml_1  -                   -              -",
            ]
        );
        assert_eq!(format_positions(&[]), "no checkpoint yet\n");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(format_secs(None), "-");
        assert_eq!(format_secs(Some(f64::NAN)), "-");
        assert_eq!(format_secs(Some(0.04)), "0.0s");
        assert_eq!(format_secs(Some(59.96)), "60.0s");
        assert_eq!(format_secs(Some(303.0)), "5m03s");
        assert_eq!(format_secs(Some(7260.0)), "2h01m");
    }
}

//! The `/cdc` request body: parsing into a typed [`CdcRequest`] with errors
//! that name the offending field, and the response shapes of the official API.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    source::{health::SourceHealth, reader::ReadError},
    task::{
        service::CreateTask, CollectionInfo, MilvusConnectParam, TaskId, TaskRecord, TaskState,
    },
};

/// A parsed `/cdc` request.
#[derive(Debug, Clone)]
pub enum CdcRequest {
    /// Create a task.
    Create(CreateTask),
    /// List every task.
    List,
    /// One task.
    Get(TaskId),
    /// Pause a task.
    Pause(TaskId),
    /// Resume a task.
    Resume(TaskId),
    /// Delete a task.
    Delete(TaskId),
    /// A task's checkpoints per channel (an extension of the official server).
    Position(TaskId),
    /// Fail over: pause the task, make its replicas on the target owned
    /// collections, answer the positions reached (an extension).
    Promote(TaskId),
}

impl CdcRequest {
    /// The `request_type` this request came as.
    pub fn kind(&self) -> &'static str {
        match self {
            CdcRequest::Create(_) => "create",
            CdcRequest::List => "list",
            CdcRequest::Get(_) => "get",
            CdcRequest::Pause(_) => "pause",
            CdcRequest::Resume(_) => "resume",
            CdcRequest::Delete(_) => "delete",
            CdcRequest::Position(_) => "position",
            CdcRequest::Promote(_) => "promote",
        }
    }
}

/// An error answer: `{"code": N, "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP-like status code.
    pub code: u16,
    /// What is wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// A 400 answer.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

const REQUEST_TYPES: &str = "create, list, get, pause, resume, delete, position, promote";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateData {
    milvus_connect_param: MilvusConnectParam,
    collection_infos: Vec<CollectionInfo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskData {
    task_id: String,
}

/// Deserializes `value` as `T`, naming the failing field in the error.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            ApiError::bad_request(format!("request_data: {inner}"))
        } else {
            ApiError::bad_request(format!("request_data.{path}: {inner}"))
        }
    })
}

/// Parses a request body. Every failure is a 400 with a message that says
/// what to fix.
pub fn parse(body: &[u8]) -> Result<CdcRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "empty body: expected {\"request_type\": ..., \"request_data\": {...}}",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad_request(
            "body must be a JSON object with request_type and request_data",
        ));
    };
    if let Some(extra) = obj
        .keys()
        .find(|k| *k != "request_type" && *k != "request_data")
    {
        return Err(ApiError::bad_request(format!(
            "unknown field `{extra}`: expected request_type and request_data"
        )));
    }
    let request_type = match obj.remove("request_type") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(format!(
                "request_type is required, one of: {REQUEST_TYPES}"
            )))
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "request_type must be a string, one of: {REQUEST_TYPES}"
            )))
        }
    };
    let data = obj.remove("request_data").unwrap_or(Value::Null);
    let need_object = |data: Value| -> Result<Value, ApiError> {
        match data {
            Value::Object(_) => Ok(data),
            Value::Null => Err(ApiError::bad_request(format!(
                "request_data is required for {request_type}"
            ))),
            _ => Err(ApiError::bad_request("request_data must be a JSON object")),
        }
    };
    let task_id = |data: Value| -> Result<TaskId, ApiError> {
        let d: TaskData = typed(need_object(data)?)?;
        TaskId::try_from(d.task_id).map_err(|e| ApiError::bad_request(format!("task_id: {e}")))
    };
    match request_type.as_str() {
        "create" => {
            let d: CreateData = typed(need_object(data)?)?;
            Ok(CdcRequest::Create(CreateTask {
                milvus_connect_param: d.milvus_connect_param,
                collection_infos: d.collection_infos,
            }))
        }
        "list" => match data {
            Value::Null => Ok(CdcRequest::List),
            Value::Object(o) if o.is_empty() => Ok(CdcRequest::List),
            _ => Err(ApiError::bad_request("list takes no request_data")),
        },
        "get" => Ok(CdcRequest::Get(task_id(data)?)),
        "pause" => Ok(CdcRequest::Pause(task_id(data)?)),
        "resume" => Ok(CdcRequest::Resume(task_id(data)?)),
        "delete" => Ok(CdcRequest::Delete(task_id(data)?)),
        "position" => Ok(CdcRequest::Position(task_id(data)?)),
        "promote" => Ok(CdcRequest::Promote(task_id(data)?)),
        other => {
            let shown: String = other.chars().take(64).collect();
            Err(ApiError::bad_request(format!(
                "unknown request_type {shown:?}, expected one of: {REQUEST_TYPES}"
            )))
        }
    }
}

/// `{"code": 200, "data": data}`.
pub fn ok(data: Value) -> Value {
    json!({"code": 200, "data": data})
}

/// `create`'s answer.
pub fn created(id: &TaskId) -> Value {
    ok(json!({"task_id": id}))
}

/// What the leader knows of a task besides its record: the source's
/// reachability and the channels its readers cannot open right now.
#[derive(Debug)]
pub struct Live<'a> {
    /// The last probe of the source's queue.
    pub source: &'a SourceHealth,
    /// The task's channels that cannot be read right now.
    pub read_errors: Vec<ReadError>,
}

/// `list`'s answer; `live` gives each task's live state.
pub fn listed<'a>(tasks: &[TaskRecord], live: impl Fn(&TaskRecord) -> Live<'a>) -> Value {
    let tasks: Vec<Value> = tasks.iter().map(|t| view(t, &live(t))).collect();
    ok(json!({ "tasks": tasks }))
}

/// `get`'s answer (note the capital `Task`, part of the contract).
pub fn got(task: &TaskRecord, live: &Live<'_>) -> Value {
    ok(json!({"Task": view(task, live)}))
}

/// A task as the API shows it. A running task that cannot progress says
/// why, in extension fields present only then: `source_error` (the source's
/// queue does not answer) and `read_errors` (channels that cannot be opened,
/// e.g. a checkpoint past the end of a recreated topic).
fn view(task: &TaskRecord, live: &Live<'_>) -> Value {
    let mut v = task.public_view();
    if task.state != TaskState::Running {
        return v;
    }
    if let Some(o) = v.as_object_mut() {
        if let SourceHealth::Down { error, since_ms } = live.source {
            o.insert(
                "source_error".into(),
                json!({"message": error, "since_ms": since_ms}),
            );
        }
        if !live.read_errors.is_empty() {
            o.insert("read_errors".into(), json!(live.read_errors));
        }
    }
    v
}

/// `position`'s answer: per channel, the checkpoint as a base64 Milvus
/// `MsgPosition` (`msg_id`), its source timestamp (`tt`) and that time in
/// ms since the epoch (`time`), as the official server shapes it.
pub fn positioned(positions: &[(String, String, u64)]) -> Value {
    let list: Vec<Value> = positions
        .iter()
        .map(|(channel, b64, ts)| {
            json!({
                "channel_name": channel,
                "msg_id": b64,
                "tt": ts,
                "time": crate::replicate::progress::physical_ms(*ts),
            })
        })
        .collect();
    ok(json!({ "positions": list }))
}

/// `promote`'s answer: what was promoted, the positions the task reached
/// (as `position` shapes them), and the `create` body of the reverse task
/// (to send to an agent whose source is the promoted cluster; it starts at
/// that cluster's earliest retained message, which holds the replicated
/// history too, applied again idempotently).
pub fn promoted(p: &crate::task::service::Promotion) -> Value {
    let positions = positioned(&p.positions)["data"]["positions"].clone();
    let names: Vec<Value> = if p.promoted.is_empty() {
        Vec::new()
    } else {
        p.promoted.iter().map(|n| json!({ "name": n })).collect()
    };
    ok(json!({
        "task_id": p.task_id,
        "state": TaskState::Paused,
        "target": p.target,
        "promoted": p.promoted,
        "positions": positions,
        "reverse_task": {
            "request_type": "create",
            "request_data": {
                "milvus_connect_param": {"uri": p.source_uri, "connect_timeout": 10},
                "collection_infos": names,
            }
        }
    }))
}

/// The empty answer of pause, resume and delete.
pub fn done() -> Value {
    ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: TaskState) -> TaskRecord {
        TaskRecord {
            task_id: TaskId::generate(),
            milvus_connect_param: MilvusConnectParam {
                uri: Some("http://localhost:19530".into()),
                ..Default::default()
            },
            collection_infos: vec![CollectionInfo {
                name: "*".into(),
                positions: Default::default(),
            }],
            state,
            created_at_ms: 1,
            history_gaps: Vec::new(),
            last_error: None,
            skipped_messages: Vec::new(),
        }
    }

    #[test]
    fn running_tasks_show_why_they_cannot_progress() {
        let down = SourceHealth::Down {
            error: "no answer".into(),
            since_ms: 7,
        };
        let stuck = || {
            vec![ReadError {
                channel: "by-dev-rootcoord-dml_3".into(),
                message: "position offset 9 is past the end of the topic".into(),
                since_ms: 8,
            }]
        };
        let live = Live {
            source: &down,
            read_errors: stuck(),
        };
        let v = got(&task(TaskState::Running), &live);
        let t = &v["data"]["Task"];
        assert_eq!(
            t["source_error"],
            json!({"message": "no answer", "since_ms": 7})
        );
        assert_eq!(t["read_errors"][0]["channel"], "by-dev-rootcoord-dml_3");
        assert_eq!(t["read_errors"][0]["since_ms"], 8);
        // Paused: nothing to report; healthy: the official shape, unchanged.
        let paused = got(&task(TaskState::Paused), &live);
        assert!(paused["data"]["Task"].get("source_error").is_none());
        assert!(paused["data"]["Task"].get("read_errors").is_none());
        let up = SourceHealth::Up { since_ms: 1 };
        let healthy = listed(&[task(TaskState::Running)], |_| Live {
            source: &up,
            read_errors: Vec::new(),
        });
        let t = &healthy["data"]["tasks"][0];
        assert!(
            t.get("source_error").is_none() && t.get("read_errors").is_none(),
            "{t}"
        );
    }

    fn err(body: &str) -> String {
        match parse(body.as_bytes()) {
            Ok(r) => panic!("accepted {body}: {r:?}"),
            Err(e) => {
                assert_eq!(e.code, 400);
                e.message
            }
        }
    }

    #[test]
    fn documented_shapes_parse() {
        let create = r#"{"request_type":"create","request_data":{"milvus_connect_param":
            {"uri":"http://localhost:19530","token":"root:Milvus","connect_timeout":10},
            "collection_infos":[{"name":"*"}]}}"#;
        assert!(matches!(
            parse(create.as_bytes()),
            Ok(CdcRequest::Create(_))
        ));
        assert!(matches!(
            parse(br#"{"request_type":"list"}"#),
            Ok(CdcRequest::List)
        ));
        let id = "0123456789abcdef0123456789abcdef";
        for (t, check) in [
            ("get", CdcRequest::Get as fn(TaskId) -> CdcRequest),
            ("pause", CdcRequest::Pause),
            ("resume", CdcRequest::Resume),
            ("delete", CdcRequest::Delete),
        ] {
            let body = format!(r#"{{"request_type":"{t}","request_data":{{"task_id":"{id}"}}}}"#);
            let r = parse(body.as_bytes()).unwrap();
            assert_eq!(r.kind(), check(TaskId::generate()).kind());
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(err("").contains("empty"));
        assert!(err("{").contains("not valid JSON"));
        assert!(err("[]").contains("JSON object"));
        assert!(err(r#"{"request_type":"nope"}"#).contains("unknown request_type"));
        assert!(err(r#"{"request_type":5}"#).contains("must be a string"));
        assert!(err(r#"{"request_data":{}}"#).contains("request_type is required"));
        assert!(err(r#"{"request_type":"get"}"#).contains("request_data is required"));
        assert!(err(r#"{"request_type":"get","request_data":{}}"#).contains("task_id"));
        assert!(
            err(r#"{"request_type":"get","request_data":{"task_id":"x"}}"#)
                .contains("32 hexadecimal")
        );
        assert!(err(r#"{"request_type":"list","extra":1}"#).contains("extra"));
        let m = err(
            r#"{"request_type":"create","request_data":{"milvus_connect_param":{"uri":"http://h","port":"x"},"collection_infos":[{"name":"*"}]}}"#,
        );
        assert!(m.contains("milvus_connect_param.port"), "{m}");
        let m = err(
            r#"{"request_type":"create","request_data":{"milvus_connect_param":{"uri":"http://h","tokn":"x"},"collection_infos":[{"name":"*"}]}}"#,
        );
        assert!(m.contains("tokn"), "{m}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let body = "[".repeat(100_000);
        assert!(err(&body).contains("not valid JSON"));
    }
}

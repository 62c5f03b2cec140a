//! Cross-checks the deployment files under `deploy/` against the code, so
//! that a renamed metric, a moved port or a changed config key breaks a test
//! instead of a production rollout:
//!
//! - every YAML document under `deploy/k8s` parses, and the kustomization
//!   lists exactly the manifests that exist;
//! - ports are the default of `server.listen` (8444) everywhere;
//! - probes use `/healthz` and `/readyz`, which the router serves;
//! - labels and selectors agree between the StatefulSet, the Services, the
//!   PodDisruptionBudget and the ServiceMonitor;
//! - the ConfigMap's `config.toml` and every `MILVUS_CDC_*` variable of the
//!   StatefulSet and of the systemd environment file load as a configuration;
//! - every metric the agent registers (read from its encoded registry) has
//!   a Grafana panel and a row in the metrics table of `docs/operations.md`,
//!   and the dashboard, the alerts and that table only use metrics that
//!   exist;
//! - every alert has a runbook section in `docs/operations.md`;
//! - the TLS overlay (`deploy/k8s-tls`) patches the base consistently: its
//!   environment loads with TLS on and an https advertised URL, the files
//!   are on the Secret's mount, probes and scraping use HTTPS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and bench helpers

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use milvus_cdc::config::{Config, ConfigOverrides};
use serde::Deserialize as _;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every YAML document of every file under deploy/k8s, with its file.
fn k8s_documents() -> Vec<(PathBuf, Value)> {
    let dir = repo().join("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML under deploy/k8s");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable manifest");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", file.display()));
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    docs
}

/// The Kubernetes objects (everything but the kustomization), by kind.
fn objects() -> BTreeMap<String, Vec<Value>> {
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (file, doc) in k8s_documents() {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: a document without kind", file.display()));
        if kind == "Kustomization" {
            continue;
        }
        assert!(
            doc["apiVersion"].is_string(),
            "{}: {kind} without apiVersion",
            file.display()
        );
        assert!(
            doc["metadata"]["name"].is_string(),
            "{}: {kind} without metadata.name",
            file.display()
        );
        by_kind.entry(kind.to_string()).or_default().push(doc);
    }
    by_kind
}

fn one(objects: &BTreeMap<String, Vec<Value>>, kind: &str) -> Value {
    match objects.get(kind).map(Vec::as_slice) {
        Some([v]) => v.clone(),
        other => panic!(
            "expected exactly one {kind}, found {}",
            other.map_or(0, <[Value]>::len)
        ),
    }
}

fn statefulset() -> Value {
    one(&objects(), "StatefulSet")
}

fn container(sts: &Value) -> Value {
    let containers = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "milvus-cdc")
        .cloned()
        .expect("a container named milvus-cdc")
}

fn default_port() -> u16 {
    Config::default().server.listen.port()
}

/// `labels ⊇ selector` (every selector label is on the object).
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(sel) = selector.as_object() else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kustomization_lists_every_manifest() {
    let docs = k8s_documents();
    let kustomization = docs
        .iter()
        .find(|(_, d)| d["kind"] == "Kustomization")
        .map(|(_, d)| d.clone())
        .expect("deploy/k8s/kustomization.yaml");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource path").to_string())
        .collect();
    let files: BTreeSet<String> = docs
        .iter()
        .filter(|(_, d)| d["kind"] != "Kustomization")
        .map(|(f, _)| {
            f.file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        listed, files,
        "kustomization resources vs files in deploy/k8s"
    );
    let kinds: BTreeSet<String> = objects().keys().cloned().collect();
    for kind in [
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/k8s");
    }
}

#[test]
fn ports_are_the_default_listen_port() {
    let port = default_port();
    assert_eq!(port, 8444, "the official server's port");
    let objs = objects();
    let sts = one(&objs, "StatefulSet");
    let c = container(&sts);
    let ports = c["ports"].as_array().expect("container ports");
    let http = ports
        .iter()
        .find(|p| p["name"] == "http")
        .expect("a container port named http");
    assert_eq!(http["containerPort"], port);
    let services = &objs["Service"];
    assert_eq!(services.len(), 2, "a headless and a client Service");
    for svc in services {
        let p = &svc["spec"]["ports"][0];
        assert_eq!(p["port"], port, "{}", svc["metadata"]["name"]);
        assert!(
            p["targetPort"] == "http" || p["targetPort"] == port,
            "{}: targetPort {}",
            svc["metadata"]["name"],
            p["targetPort"]
        );
    }
    let cfg = configmap_config();
    assert_eq!(cfg.server.listen.port(), port, "ConfigMap server.listen");
    let dockerfile = read("deploy/docker/Dockerfile");
    assert!(
        dockerfile.contains(&format!("EXPOSE {port}")),
        "Dockerfile EXPOSE"
    );
    assert!(
        dockerfile.contains(r#"ENTRYPOINT ["milvus-cdc", "serve"]"#),
        "Dockerfile ENTRYPOINT"
    );
}

#[test]
fn probes_use_paths_the_router_serves() {
    // The source without whitespace, so `.route(\n "/healthz",` matches too.
    let router: String = include_str!("../src/api/mod.rs")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    for path in ["/healthz", "/readyz", "/metrics", "/cdc", "/status"] {
        assert!(
            router.contains(&format!(".route(\"{path}\"")),
            "the router does not serve {path}"
        );
    }
    let c = container(&statefulset());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "http", "{probe} port");
    }
    // /readyz waits up to etcd.request_timeout for etcd: the probe must wait longer.
    let timeout = c["readinessProbe"]["timeoutSeconds"]
        .as_u64()
        .expect("readinessProbe.timeoutSeconds");
    assert!(
        timeout > configmap_config().etcd.request_timeout.as_secs(),
        "readiness probe timeout {timeout}s must exceed etcd.request_timeout"
    );
    let resources = &c["resources"];
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(resources[k][r].is_string(), "resources.{k}.{r}");
        }
    }
}

#[test]
fn labels_and_selectors_agree() {
    let objs = objects();
    let sts = one(&objs, "StatefulSet");
    let pod_labels = &sts["spec"]["template"]["metadata"]["labels"];
    let sts_selector = &sts["spec"]["selector"]["matchLabels"];
    assert!(
        selects(sts_selector, pod_labels),
        "StatefulSet selector does not match its pod template"
    );
    assert_eq!(sts["spec"]["replicas"], 3);
    let services = &objs["Service"];
    for svc in services {
        assert!(
            selects(&svc["spec"]["selector"], pod_labels),
            "Service {} does not select the pods",
            svc["metadata"]["name"]
        );
    }
    let headless: Vec<&Value> = services
        .iter()
        .filter(|s| s["spec"]["clusterIP"] == "None")
        .collect();
    assert_eq!(headless.len(), 1, "one headless Service");
    let headless = headless[0];
    assert_eq!(
        sts["spec"]["serviceName"], headless["metadata"]["name"],
        "StatefulSet serviceName must be the headless Service"
    );
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"], true,
        "followers must reach a leader that is not ready"
    );
    let pdb = one(&objs, "PodDisruptionBudget");
    assert!(
        selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels),
        "PodDisruptionBudget does not select the pods"
    );
    let anti = &sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    let terms = anti["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .or_else(|| anti["preferredDuringSchedulingIgnoredDuringExecution"].as_array())
        .expect("pod anti-affinity");
    for t in terms {
        let term = if t["podAffinityTerm"].is_object() {
            &t["podAffinityTerm"]
        } else {
            t
        };
        assert!(
            selects(&term["labelSelector"]["matchLabels"], pod_labels),
            "anti-affinity does not select the pods"
        );
    }
    // The ServiceMonitor scrapes exactly one Service, through a port it has.
    let sm = one(&objs, "ServiceMonitor");
    let sm_selector = &sm["spec"]["selector"]["matchLabels"];
    let scraped: Vec<&Value> = services
        .iter()
        .filter(|s| selects(sm_selector, &s["metadata"]["labels"]))
        .collect();
    assert_eq!(
        scraped.len(),
        1,
        "the ServiceMonitor must select one Service"
    );
    let port_names: Vec<&Value> = scraped[0]["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| &p["name"])
        .collect();
    for ep in sm["spec"]["endpoints"].as_array().expect("endpoints") {
        assert!(
            port_names.contains(&&ep["port"]),
            "endpoint port {}",
            ep["port"]
        );
        assert_eq!(ep["path"], "/metrics");
    }
    // `job` comes from this Service label; the alerts select job="<value>".
    let job_label = sm["spec"]["jobLabel"].as_str().expect("jobLabel");
    let job = scraped[0]["metadata"]["labels"][job_label]
        .as_str()
        .expect("the jobLabel label on the Service");
    let rule = serde_json::to_string(&one(&objs, "PrometheusRule")).expect("json");
    assert!(
        rule.contains(&format!("job=\\\"{job}\\\"")),
        "alerts must select job=\"{job}\""
    );
}

fn configmap_text() -> String {
    let cm = one(&objects(), "ConfigMap");
    cm["data"]["config.toml"]
        .as_str()
        .expect("ConfigMap data config.toml")
        .to_string()
}

fn configmap_config() -> Config {
    Config::from_toml_str(&configmap_text())
        .unwrap_or_else(|e| panic!("the ConfigMap's config.toml is invalid: {e}"))
}

/// The StatefulSet's `MILVUS_CDC_*` variables, with `$(VAR)` references to
/// the downward API replaced as Kubernetes would for pod 0.
fn statefulset_env(sts: &Value) -> Vec<(String, String)> {
    let c = container(sts);
    let env = c["env"].as_array().expect("container env");
    let mut plain: BTreeMap<String, String> = BTreeMap::new();
    plain.insert("POD_NAME".into(), "milvus-cdc-0".into());
    plain.insert("POD_NAMESPACE".into(), "milvus-cdc".into());
    let mut out = Vec::new();
    for e in env {
        let name = e["name"].as_str().expect("env name").to_string();
        if !name.starts_with("MILVUS_CDC_") {
            continue;
        }
        let value = match e["value"].as_str() {
            Some(v) => plain.iter().fold(v.to_string(), |acc, (k, val)| {
                acc.replace(&format!("$({k})"), val)
            }),
            // From a Secret: any string.
            None => "secret-value".to_string(),
        };
        out.push((name, value));
    }
    out
}

#[test]
fn configmap_and_environment_load_as_a_configuration() {
    let cfg = configmap_config();
    assert!(
        cfg.server.advertise.is_empty(),
        "advertise is per pod: set it through the environment, not the ConfigMap"
    );
    let sts = statefulset();
    let c = container(&sts);
    // The file is mounted where --config points.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("--config in args");
    let mount = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == "config")
        .expect("a config volume mount");
    let mount_path = mount["mountPath"].as_str().expect("mountPath");
    assert_eq!(path, format!("{mount_path}/config.toml"));
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    let cm_name = one(&objects(), "ConfigMap")["metadata"]["name"].clone();
    assert!(
        volumes
            .iter()
            .any(|v| v["name"] == "config" && v["configMap"]["name"] == cm_name),
        "the config volume must be the ConfigMap"
    );
    // The environment applies on top of it: every variable names a real key.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.toml");
    std::fs::write(&file, configmap_text()).expect("write config");
    let env = statefulset_env(&sts);
    assert!(env.iter().any(|(k, _)| k == "MILVUS_CDC_SERVER__ADVERTISE"));
    let loaded = Config::load(Some(&file), env, &ConfigOverrides::default())
        .unwrap_or_else(|e| panic!("StatefulSet environment does not load: {e}"));
    let headless = objects()["Service"]
        .iter()
        .find(|s| s["spec"]["clusterIP"] == "None")
        .map(|s| s["metadata"]["name"].as_str().expect("name").to_string())
        .expect("headless Service");
    assert_eq!(
        loaded.server.advertise_url(),
        format!(
            "http://milvus-cdc-0.{headless}.milvus-cdc.svc.cluster.local:{}",
            default_port()
        )
    );
}

/// The documents of one YAML file.
fn yaml_file(rel: &str) -> Value {
    let text = read(rel);
    let mut docs = serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}")))
        .filter(|v| !v.is_null());
    let doc = docs.next().unwrap_or_else(|| panic!("{rel} is empty"));
    assert!(docs.next().is_none(), "{rel}: one document expected");
    doc
}

#[test]
fn tls_overlay_patches_the_base_consistently() {
    let kustomization = yaml_file("deploy/k8s-tls/kustomization.yaml");
    assert_eq!(kustomization["kind"], "Kustomization");
    assert_eq!(kustomization["resources"], serde_json::json!(["../k8s"]));
    let patches: Vec<String> = kustomization["patches"]
        .as_array()
        .expect("patches")
        .iter()
        .map(|p| p["path"].as_str().expect("patch path").to_string())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(repo().join("deploy/k8s-tls"))
        .expect("deploy/k8s-tls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(
        patches.iter().cloned().collect::<BTreeSet<_>>(),
        files,
        "patches vs files in deploy/k8s-tls"
    );
    let base = statefulset();
    let patch = yaml_file("deploy/k8s-tls/statefulset-tls.yaml");
    assert_eq!(patch["kind"], base["kind"]);
    assert_eq!(patch["metadata"]["name"], base["metadata"]["name"]);
    let c = container(&patch);
    // A merged env list puts the patch's entries first: a $(VAR) they use
    // must be defined in the patch too, ahead of it.
    let names: Vec<&str> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for (i, e) in c["env"].as_array().expect("env").iter().enumerate() {
        for var in ["POD_NAME", "POD_NAMESPACE"] {
            if e["value"]
                .as_str()
                .is_some_and(|v| v.contains(&format!("$({var})")))
            {
                assert!(names[..i].contains(&var), "{var} used before it is defined");
            }
        }
    }
    // The environment: the base's, with the patch's variables merged by name.
    let mut env: BTreeMap<String, String> = statefulset_env(&base).into_iter().collect();
    env.extend(statefulset_env(&patch));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.toml");
    std::fs::write(&file, configmap_text()).expect("write config");
    let cfg = Config::load(Some(&file), env, &ConfigOverrides::default())
        .unwrap_or_else(|e| panic!("the TLS overlay's environment does not load: {e}"));
    assert!(cfg.server.tls_enabled());
    assert!(
        cfg.server
            .advertise_url()
            .starts_with("https://milvus-cdc-0."),
        "{}",
        cfg.server.advertise_url()
    );
    // The files are on the mount of the Secret's volume.
    let mount = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == "tls")
        .expect("a tls volume mount");
    let dir = Path::new(mount["mountPath"].as_str().expect("mountPath"));
    for f in [&cfg.server.tls_cert_file, &cfg.server.tls_key_file] {
        let f = f.as_ref().expect("a TLS file");
        assert_eq!(f.parent(), Some(dir), "{} not on the mount", f.display());
    }
    let volumes = patch["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes");
    assert!(volumes
        .iter()
        .any(|v| v["name"] == "tls" && v["secret"]["secretName"].is_string()));
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }
    let sm = yaml_file("deploy/k8s-tls/servicemonitor-tls.yaml");
    let base_sm = one(&objects(), "ServiceMonitor");
    assert_eq!(sm["metadata"]["name"], base_sm["metadata"]["name"]);
    let endpoint = &sm["spec"]["endpoints"][0];
    let base_endpoint = &base_sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "https");
    for k in ["port", "path", "interval", "scrapeTimeout"] {
        assert_eq!(endpoint[k], base_endpoint[k], "ServiceMonitor endpoint {k}");
    }
}

/// `KEY=value` lines of the systemd environment file, commented examples
/// included, with the quotes systemd removes removed.
fn systemd_env_lines() -> Vec<(String, String)> {
    read("deploy/systemd/milvus-cdc.env")
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter(|l| l.starts_with("MILVUS_CDC_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn systemd_unit_and_environment_are_consistent() {
    let unit = read("deploy/systemd/milvus-cdc.service");
    for needle in [
        "ExecStart=/usr/local/bin/milvus-cdc serve --config /etc/milvus-cdc/config.toml",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
        "TimeoutStopSec=",
        "EnvironmentFile=-/etc/milvus-cdc/milvus-cdc.env",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(needle), "milvus-cdc.service lacks {needle}");
    }
    let env = systemd_env_lines();
    assert!(env.len() >= 5, "{env:?}");
    // Each example, alone and all together, is a valid override.
    for pair in &env {
        Config::load(None, vec![pair.clone()], &ConfigOverrides::default())
            .unwrap_or_else(|e| panic!("milvus-cdc.env line {}: {e}", pair.0));
    }
    let cfg = Config::load(None, env, &ConfigOverrides::default()).expect("all together");
    assert_eq!(
        cfg.etcd.endpoints.len(),
        3,
        "the endpoints example is an array"
    );
    assert_eq!(cfg.etcd.password.as_deref(), Some("change-me"));
}

// ---------------------------------------------------------------- metrics

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// What `/metrics` declares: the encoded registry of a fresh
/// [`Metrics`](milvus_cdc::metrics::Metrics), with a placeholder series in
/// every labelled family (the text format leaves out a family without any).
fn encoded_metrics() -> String {
    let metrics = milvus_cdc::metrics::Metrics::new();
    metrics.add_placeholder_series();
    metrics.encode()
}

fn parse_type(name: &str, ty: &str) -> MetricType {
    match ty {
        "counter" => MetricType::Counter,
        "gauge" => MetricType::Gauge,
        "histogram" => MetricType::Histogram,
        other => panic!("unexpected type {other} of {name}"),
    }
}

/// `(full name, type)` of every metric, from the `# TYPE` lines of
/// [`encoded_metrics`].
fn registered_metrics() -> Vec<(String, MetricType)> {
    encoded_metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next().expect("metric name");
            let ty = parts.next().expect("metric type");
            (name.to_string(), parse_type(name, ty))
        })
        .collect()
}

/// The sample lines of an encoded registry: `(sample name, label names)`.
fn samples(encoded: &str) -> Vec<(String, Vec<String>)> {
    encoded
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let end = l.find(['{', ' ']).expect("a value after the name");
            let labels = match l[end..].strip_prefix('{') {
                Some(rest) => rest
                    .split('}')
                    .next()
                    .expect("closing brace")
                    .split(',')
                    .map(|kv| kv.split('=').next().expect("label name").to_string())
                    .collect(),
                None => Vec::new(),
            };
            (l[..end].to_string(), labels)
        })
        .collect()
}

/// The names a metric has in the text format.
fn exposed_names(name: &str, ty: MetricType) -> Vec<String> {
    match ty {
        MetricType::Counter => vec![format!("{name}_total")],
        MetricType::Gauge => vec![name.to_string()],
        MetricType::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{name}{s}"))
            .collect(),
    }
}

fn all_exposed() -> BTreeSet<String> {
    registered_metrics()
        .iter()
        .flat_map(|(n, t)| exposed_names(n, *t))
        .collect()
}

/// Every `milvus_cdc_*` identifier in a PromQL expression.
fn metric_tokens(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while let Some(pos) = expr[i..].find("milvus_cdc_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !is_ident(bytes[start - 1]) {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn every_metric_is_declared_with_help_and_samples() {
    let encoded = encoded_metrics();
    let metrics = registered_metrics();
    assert!(metrics.len() >= 20, "{metrics:?}");
    let names: BTreeSet<&str> = metrics.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), metrics.len(), "a metric declared twice");
    for (name, _) in &metrics {
        assert!(name.starts_with("milvus_cdc_"), "{name}");
        let help = encoded
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
            .unwrap_or_else(|| panic!("{name} has no # HELP line"));
        assert!(help.trim().len() > 5, "{name}: help {help:?}");
    }
    // The names the dashboard and alerts may use are the samples' names.
    let sampled: BTreeSet<String> = samples(&encoded).into_iter().map(|(n, _)| n).collect();
    assert_eq!(all_exposed(), sampled, "exposed names vs sample lines");
    // Without placeholders the agent declares a subset, with the same types.
    let bare = milvus_cdc::metrics::Metrics::new().encode();
    let types: BTreeMap<&str, MetricType> = metrics.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    for line in bare.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line["# TYPE ".len()..].split_whitespace();
        let (name, ty) = (parts.next().expect("name"), parts.next().expect("type"));
        assert_eq!(types.get(name), Some(&parse_type(name, ty)), "{line}");
    }
}

#[test]
fn operations_doc_describes_every_metric() {
    let docs = read("docs/operations.md");
    // `| `name` | type | `label`, `label` | meaning |` rows of the metrics table.
    let mut rows: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in docs.lines().filter(|l| l.starts_with("| `milvus_cdc_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        assert!(
            rows.insert(name.clone(), (cells[2].to_string(), labels))
                .is_none(),
            "{name} described twice"
        );
    }
    let encoded = encoded_metrics();
    let samples = samples(&encoded);
    let mut documented = BTreeSet::new();
    for (name, ty) in registered_metrics() {
        // The table names a histogram without its `_bucket` suffix.
        let primary = match ty {
            MetricType::Histogram => name.clone(),
            _ => exposed_names(&name, ty).remove(0),
        };
        let (doc_type, doc_labels) = rows
            .get(&primary)
            .unwrap_or_else(|| panic!("docs/operations.md has no row for {primary}"));
        let ty_name = format!("{ty:?}").to_lowercase();
        assert_eq!(doc_type, &ty_name, "{primary}: type in docs/operations.md");
        let labels: BTreeSet<String> = samples
            .iter()
            .filter(|(n, _)| exposed_names(&name, ty).contains(n))
            .flat_map(|(_, l)| l.iter().cloned())
            .filter(|l| l != "le")
            .collect();
        assert_eq!(
            doc_labels, &labels,
            "{primary}: labels in docs/operations.md"
        );
        documented.insert(primary);
    }
    let unknown: Vec<&String> = rows.keys().filter(|n| !documented.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "docs/operations.md describes unknown metrics {unknown:?}"
    );
}

/// Every PromQL expression of the dashboard (panels, variables, annotations).
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, val) in m {
                    match (k.as_str(), val) {
                        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                        _ => walk(val, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(dashboard, &mut out);
    out
}

#[test]
fn dashboard_has_a_panel_for_every_metric() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/milvus-cdc-dashboard.json"))
        .expect("the dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(p["gridPos"]["w"].is_u64(), "gridPos of {}", p["title"]);
        if p["type"] != "row" {
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        }
    }
    let used: BTreeSet<String> = dashboard_exprs(&dashboard)
        .iter()
        .flat_map(|e| metric_tokens(e))
        .collect();
    let exposed = all_exposed();
    for (name, ty) in registered_metrics() {
        let primary = exposed_names(&name, ty).remove(0);
        assert!(
            used.contains(&primary),
            "no dashboard panel queries {primary}"
        );
    }
    let unknown: Vec<&String> = used.difference(&exposed).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries unknown metrics {unknown:?}"
    );
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn alerts_use_existing_metrics_and_have_runbooks() {
    let rule = one(&objects(), "PrometheusRule");
    let exposed = all_exposed();
    let docs = read("docs/operations.md");
    let anchors: BTreeSet<String> = docs
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let mut alerts: BTreeMap<String, String> = BTreeMap::new();
    for group in rule["spec"]["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alert name").to_string();
            let expr = r["expr"].as_str().expect("expr").to_string();
            let tokens = metric_tokens(&expr);
            let unknown: Vec<&String> = tokens.difference(&exposed).collect();
            assert!(
                unknown.is_empty(),
                "{name} uses unknown metrics {unknown:?}"
            );
            assert!(r["labels"]["severity"].is_string(), "{name}: severity");
            assert!(r["annotations"]["summary"].is_string(), "{name}: summary");
            let runbook = r["annotations"]["runbook"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: runbook annotation"));
            let (file, frag) = runbook
                .split_once('#')
                .unwrap_or_else(|| panic!("{name}: runbook needs an anchor"));
            assert_eq!(file, "docs/operations.md", "{name}");
            assert!(
                anchors.contains(frag),
                "{name}: docs/operations.md has no heading for #{frag}"
            );
            assert!(
                alerts.insert(name.clone(), expr).is_none(),
                "duplicate {name}"
            );
        }
    }
    // The alerts operations rely on, with the metric each one watches.
    for (name, metric) in [
        ("MilvusCdcNoLeader", "milvus_cdc_is_leader"),
        ("MilvusCdcLeaderFlapping", "milvus_cdc_leader_changes_total"),
        (
            "MilvusCdcReplicationLagHigh",
            "milvus_cdc_replication_lag_seconds",
        ),
        (
            "MilvusCdcCheckpointStale",
            "milvus_cdc_checkpoint_age_seconds",
        ),
        ("MilvusCdcApplyErrors", "milvus_cdc_apply_errors_total"),
        (
            "MilvusCdcFencingRefusals",
            "milvus_cdc_fencing_refusals_total",
        ),
    ] {
        let expr = alerts
            .get(name)
            .unwrap_or_else(|| panic!("alert {name} missing"));
        assert!(metric_tokens(expr).contains(metric), "{name}: {expr}");
    }
}

#[test]
fn metric_tokens_are_whole_identifiers() {
    let t = metric_tokens(
        "sum(rate(milvus_cdc_a_total{x=\"milvus_cdc_in_label\"}[5m])) / xmilvus_cdc_no + milvus_cdc_b",
    );
    let expected: BTreeSet<String> = ["milvus_cdc_a_total", "milvus_cdc_in_label", "milvus_cdc_b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(t, expected);
    assert_eq!(anchor(" MilvusCdcNoLeader"), "milvuscdcnoleader");
    assert_eq!(
        anchor("Lost etcd: recreate tasks"),
        "lost-etcd-recreate-tasks"
    );
}

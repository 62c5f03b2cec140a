//! Loading, overrides, validation and redaction of the configuration.

#[test]
fn secrets_come_from_files_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "from-file-s3cret\n").unwrap();
    let text = format!(
        "[etcd]\npassword_file = {:?}\n[source]\nmilvus_token = \"tok-s3cret\"\n",
        file.display().to_string()
    );
    let cfg = Config::from_toml_str(&text).unwrap();
    assert_eq!(cfg.etcd.password.as_deref(), Some("from-file-s3cret"));
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains("s3cret"), "{dbg}");
    let mut cfg = cfg;
    cfg.source.kafka.sasl_password = Some("kafka-s3cret".into());
    let printed = toml::to_string(&cfg.with_secrets_hidden()).unwrap();
    assert!(!printed.contains("s3cret"), "{printed}");
    let both = format!(
        "[etcd]\npassword = \"x\"\npassword_file = {:?}\n",
        file.display().to_string()
    );
    let err = Config::from_toml_str(&both).unwrap_err().to_string();
    assert!(err.contains("not both"), "{err}");
    let missing = "[source.kafka]\nsasl_password_file = \"/nonexistent/pw\"\n";
    let err = Config::from_toml_str(missing).unwrap_err().to_string();
    assert!(
        err.contains("sasl_password_file") && err.contains("/nonexistent/pw"),
        "{err}"
    );
}

use super::*;

#[test]
fn empty_file_gives_defaults() {
    let cfg = Config::from_toml_str("").unwrap();
    assert_eq!(cfg, Config::default());
    assert_eq!(cfg.server.advertise_url(), "http://127.0.0.1:8444");
    assert_eq!(cfg.source.replicate_channel(), "by-dev-replicate-msg");
    assert_eq!(cfg.source.dml_channels()[15], "by-dev-rootcoord-dml_15");
}

#[test]
fn unknown_key_is_named() {
    let err = Config::from_toml_str("[etcd]\nendpoint = [\"x\"]\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("etcd"), "{msg}");
    assert!(msg.contains("endpoint"), "{msg}");
}

#[test]
fn wrong_type_is_named() {
    let err = Config::from_toml_str("[ha]\nlease_ttl = \"soon\"\n").unwrap_err();
    assert!(err.to_string().contains("ha.lease_ttl"), "{err}");
}

#[test]
fn invalid_values_are_named() {
    let err = Config::from_toml_str("[tasks]\nmax_tasks = 0\n").unwrap_err();
    assert!(err.to_string().contains("tasks.max_tasks"), "{err}");
    let err = Config::from_toml_str("[server]\nadvertise = \"host:1\"\n").unwrap_err();
    assert!(err.to_string().contains("server.advertise"), "{err}");
}

#[test]
fn tls_settings_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    // A certificate without its key, and the reverse.
    let err = Config::from_toml_str(&format!("[server]\ntls_cert_file = {}\n", q(&cert)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.tls_key_file"), "{err}");
    let err = Config::from_toml_str(&format!("[server]\ntls_key_file = {}\n", q(&key)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.tls_cert_file"), "{err}");
    // The files themselves are read by `serve` (api::tls names them).
    let elsewhere = "[server]\ntls_cert_file = \"/n/c.pem\"\ntls_key_file = \"/n/k.pem\"\n";
    assert!(Config::from_toml_str(elsewhere)
        .unwrap()
        .server
        .tls_enabled());
    // A CA without TLS on is a mistake.
    let err = Config::from_toml_str(&format!("[server]\ntls_ca_file = {}\n", q(&cert)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.tls_ca_file"), "{err}");
    // With TLS on, the advertised URL is https.
    let both = format!(
        "[server]\ntls_cert_file = {}\ntls_key_file = {}\n",
        q(&cert),
        q(&key)
    );
    let cfg = Config::from_toml_str(&both).unwrap();
    assert_eq!(cfg.server.advertise_url(), "https://127.0.0.1:8444");
    let err = Config::from_toml_str(&format!("{both}advertise = \"http://h:8444\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.advertise") && err.contains("https"),
        "{err}"
    );
}

#[test]
fn env_and_cli_override_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"0.0.0.0:1000\"\n[tasks]\nmax_tasks = 3\n",
    )
    .unwrap();
    let env = vec![
        ("MILVUS_CDC_TASKS__MAX_TASKS".to_string(), "7".to_string()),
        ("MILVUS_CDC_ETCD__ROOT".to_string(), "a/b".to_string()),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let cli = ConfigOverrides {
        listen: Some("127.0.0.1:2000".parse().unwrap()),
        ..Default::default()
    };
    let cfg = Config::load(Some(&path), env, &cli).unwrap();
    assert_eq!(cfg.tasks.max_tasks, 7);
    assert_eq!(cfg.etcd.root, "a/b");
    assert_eq!(cfg.server.listen.port(), 2000);
}

#[test]
fn bad_env_is_named() {
    let env = vec![(
        "MILVUS_CDC_TASKS__MAX_TASKS".to_string(),
        "many".to_string(),
    )];
    let err = Config::load(None, env, &ConfigOverrides::default()).unwrap_err();
    assert!(err.to_string().contains("tasks.max_tasks"), "{err}");
    let env = vec![("MILVUS_CDC_A__B__C__D".to_string(), "1".to_string())];
    let err = Config::load(None, env, &ConfigOverrides::default()).unwrap_err();
    assert!(err.to_string().contains("MILVUS_CDC_A__B__C__D"), "{err}");
    // A subsection: [source.kafka].
    let env = vec![
        (
            "MILVUS_CDC_SOURCE__MQ_TYPE".to_string(),
            "kafka".to_string(),
        ),
        (
            "MILVUS_CDC_SOURCE__KAFKA__BROKERS".to_string(),
            r#"["k1:9092", "k2:9092"]"#.to_string(),
        ),
        (
            "MILVUS_CDC_SOURCE__KAFKA__SASL_PASSWORD".to_string(),
            "s3cret".to_string(),
        ),
    ];
    let cfg = Config::load(None, env, &ConfigOverrides::default()).unwrap();
    assert_eq!(cfg.source.mq_type, MqType::Kafka);
    assert_eq!(cfg.source.kafka.brokers, vec!["k1:9092", "k2:9092"]);
    assert!(
        !format!("{cfg:?}").contains("s3cret"),
        "secrets are redacted"
    );
    // CLI variables (no `__`) are not configuration keys.
    let env = vec![("MILVUS_CDC_TARGET_TOKEN".to_string(), "x".to_string())];
    assert!(Config::load(None, env, &ConfigOverrides::default()).is_ok());
}

#[test]
fn shipped_example_is_valid_and_complete() {
    let text = include_str!("../../config/example.toml");
    let cfg = Config::from_toml_str(text).unwrap();
    assert_eq!(cfg, Config::default(), "example must document the defaults");
    // Every section of the config appears in the example.
    for section in [
        "[server]",
        "[log]",
        "[etcd]",
        "[source]",
        "[ha]",
        "[tasks]",
        "[replicate]",
    ] {
        assert!(text.contains(section), "{section} missing from example");
    }
}

#[test]
fn pulsar_section_as_milvus_describes_it() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tok");
    std::fs::write(&tok, "jwt-s3cret\n").unwrap();
    let text = format!(
        "[source]\nmq = \"pulsar\"\n[source.pulsar]\naddress = \"pulsar.example\"\n\
         port = 6651\ntenant = \"milvus\"\nnamespace = \"prod\"\n\
         auth_plugin = \"org.apache.pulsar.client.impl.auth.AuthenticationToken\"\n\
         auth_token_file = {:?}\n",
        tok.display().to_string()
    );
    let cfg = Config::from_toml_str(&text).unwrap();
    let p = &cfg.source.pulsar;
    assert_eq!(cfg.source.mq_type, MqType::Pulsar);
    assert_eq!(p.service_url().unwrap(), "pulsar://pulsar.example:6651");
    assert_eq!(p.web_port, 80);
    assert_eq!(
        p.topic("by-dev-rootcoord-dml_3"),
        "persistent://milvus/prod/by-dev-rootcoord-dml_3"
    );
    assert!(p.token_auth());
    assert_eq!(p.auth_token.as_deref(), Some("jwt-s3cret"));
    assert!(!format!("{cfg:?}").contains("s3cret"));
    let printed = toml::to_string(&cfg.clone().with_secrets_hidden()).unwrap();
    assert!(!printed.contains("s3cret"), "{printed}");
    // Full URLs, with or without a port.
    let url = |address: &str| {
        PulsarConfig {
            address: address.into(),
            ..PulsarConfig::default()
        }
        .service_url()
    };
    assert_eq!(url("pulsar+ssl://b:6651").unwrap(), "pulsar+ssl://b:6651");
    assert_eq!(url("pulsar://b").unwrap(), "pulsar://b:6650");
    assert_eq!(url("localhost").unwrap(), "pulsar://localhost:6650");
}

#[test]
fn bad_pulsar_settings_are_named() {
    let err_of = |body: &str| {
        Config::from_toml_str(&format!(
            "[source]\nmq_type = \"pulsar\"\n[source.pulsar]\n{body}\n"
        ))
        .unwrap_err()
        .to_string()
    };
    let err = err_of("address = \"http://b:8080\"");
    assert!(err.contains("source.pulsar.address"), "{err}");
    let err = err_of("address = \"b:6650\"");
    assert!(
        err.contains("source.pulsar.address") && err.contains("port"),
        "{err}"
    );
    let err =
        err_of("auth_plugin = \"org.apache.pulsar.client.impl.auth.oauth2.AuthenticationOAuth2\"");
    assert!(
        err.contains("source.pulsar.auth_plugin") && err.contains("token"),
        "{err}"
    );
    let err = err_of("auth_plugin = \"token\"");
    assert!(err.contains("source.pulsar.auth_token"), "{err}");
    let err = err_of("tenant = \"a/b\"");
    assert!(err.contains("source.pulsar.tenant"), "{err}");
    let err = err_of("tls_ca = \"/ca.pem\"");
    assert!(
        err.contains("source.pulsar.tls_ca") && err.contains("pulsar+ssl"),
        "{err}"
    );
    let err = err_of("address = \"pulsar+ssl://b\"\ntls_allow_insecure = true");
    assert!(
        err.contains("source.pulsar.tls_allow_insecure") && err.contains("tls_ca"),
        "{err}"
    );
    let err = err_of("auth_token = \"x\"\nauth_token_file = \"/nonexistent\"");
    assert!(err.contains("not both"), "{err}");
    let err = err_of("port = \"many\"");
    assert!(err.contains("source.pulsar.port"), "{err}");
    // Environment overrides reach the subsection.
    let env = vec![
        (
            "MILVUS_CDC_SOURCE__MQ_TYPE".to_string(),
            "pulsar".to_string(),
        ),
        (
            "MILVUS_CDC_SOURCE__PULSAR__ADDRESS".to_string(),
            "pulsar://10.0.0.5:6650".to_string(),
        ),
        (
            "MILVUS_CDC_SOURCE__PULSAR__AUTH_TOKEN".to_string(),
            "s3cret".to_string(),
        ),
    ];
    let cfg = Config::load(None, env, &ConfigOverrides::default()).unwrap();
    assert_eq!(
        cfg.source.pulsar.service_url().unwrap(),
        "pulsar://10.0.0.5:6650"
    );
    assert!(cfg.source.pulsar.token_auth());
    assert!(!format!("{cfg:?}").contains("s3cret"));
}

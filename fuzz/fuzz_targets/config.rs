//! The configuration file reader: `app::config::file::read_apps` on a YAML or TOML file of
//! any bytes, for each sink (which decides the destination key an app may set).
//!
//! Input: a byte choosing the format and the sink, then the file. The reader follows
//! `token_file` and `secret_key_file` paths: inputs naming `/dev/` or `/proc/` are skipped,
//! since an endless file there is the operator's choice, not a parser bug.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use timbridge::app::config::file::read_apps;
use timbridge::sink::kafka::KafkaConfig;
use timbridge::sink::nats::NatsConfig;
use timbridge::wire::Template;
use timbridge::SinkConfig;

/// One directory per process, on tmpfs when there is one.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = match std::path::Path::new("/dev/shm").is_dir() {
            true => PathBuf::from("/dev/shm"),
            false => std::env::temp_dir(),
        };
        let dir = base.join(format!("timbridge-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the fuzz directory");
        dir
    })
}

fn template(text: &str) -> Template {
    Template::parse("--fuzz", text).expect("a fixed valid template")
}

fn sinks() -> &'static [SinkConfig; 3] {
    static SINKS: OnceLock<[SinkConfig; 3]> = OnceLock::new();
    SINKS.get_or_init(|| {
        let nats = NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream: "TIM".into(),
            stream_subjects: vec!["tim.>".into(), "staging.*.*".into()],
            stream_replicas: 1,
            duplicate_window: Duration::from_secs(120),
            subject: template("tim.{command}.{partition}"),
            creds_file: None,
            token: None,
            user_password: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_required: false,
            connect_timeout: Duration::from_secs(2),
            max_pending_acks: 8192,
            client_capacity: 8192,
        };
        let kafka = KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: template("tim.{command}"),
            linger: Duration::from_millis(5),
            compression: "none".into(),
            queue_max_messages: 100_000,
            options: Vec::new(),
            secret_options: Vec::new(),
        };
        [
            SinkConfig::Stdout,
            SinkConfig::Nats(nats),
            SinkConfig::Kafka(kafka),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let lowered = text.to_ascii_lowercase();
    if lowered.windows(5).any(|w| w == b"/dev/" || w == b"/proc") {
        return;
    }
    let name = match pick & 1 {
        0 => "apps.yaml",
        _ => "apps.toml",
    };
    let sink = &sinks()[usize::from(pick >> 1) % 3];
    let path = dir().join(name);
    std::fs::write(&path, text).expect("writing the file");
    match read_apps(&path, sink) {
        Ok(apps) => {
            assert!(!apps.is_empty());
            for (i, app) in apps.iter().enumerate() {
                assert!(app.sdkappid > 0);
                assert!(apps[..i].iter().all(|other| other.sdkappid != app.sdkappid));
            }
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});

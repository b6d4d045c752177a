//! Flags of `timbridge audit`: the apps and their REST credentials (`--config`), the stream to
//! read (the NATS flags, the same as the bridge's), and the auditor's own bounds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse::parse_duration;
use super::rest::RestEndpointArgs;
use super::{KafkaArgs, NatsArgs, OrderedArgs, SinkKind};
use crate::audit::{AuditConfig, Shard};
use crate::core::ConfigError;
use crate::sink::SinkConfig;
use crate::tencent::rest::RestConfig;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The apps, with `rest:` credentials (region, identifier, secret_key) for those audited:
    /// the bridge's configuration file.
    #[arg(long, env = "TIMBRIDGE_CONFIG")]
    pub config: PathBuf,

    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "TIMBRIDGE_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// The bridge's broker: where the stream is read back from and backfills go (`nats` or
    /// `kafka`, with the same sink flags as the bridge's).
    #[arg(long, env = "TIMBRIDGE_SINK", value_enum, default_value = "nats")]
    pub sink: SinkKind,

    /// Longest wait for the broker's acknowledgement of a backfill or an event.
    #[arg(long, env = "TIMBRIDGE_PUBLISH_TIMEOUT", default_value = "1500ms", value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// The bridge's --partitions: a backfill must land on the live record's partition.
    #[arg(long, env = "TIMBRIDGE_PARTITIONS", default_value_t = 16)]
    pub partitions: u32,

    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "TIMBRIDGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// How long a missing MsgSeq may stay missing (late or reordered callbacks) before Tencent's
    /// history is asked.
    #[arg(long, env = "TIMBRIDGE_GAP_GRACE", default_value = "30s", value_parser = parse_duration, help_heading = "Auditor")]
    pub gap_grace: Duration,

    /// Groups with a record this recent get the tail check (Tencent's NextMsgSeq against the
    /// highest seq seen), which finds a group's last messages lost.
    #[arg(long, env = "TIMBRIDGE_TAIL_WINDOW", default_value = "10m", value_parser = parse_duration, help_heading = "Auditor")]
    pub tail_window: Duration,

    /// How often the tail check runs (50 groups per REST call, within --rest-max-rate).
    #[arg(long, env = "TIMBRIDGE_TAIL_INTERVAL", default_value = "60s", value_parser = parse_duration, help_heading = "Auditor")]
    pub tail_interval: Duration,

    /// A group without records for this long is no longer tracked (at least --tail-window).
    #[arg(long, env = "TIMBRIDGE_AUDIT_GROUP_IDLE", default_value = "1h", value_parser = parse_duration, help_heading = "Auditor")]
    pub audit_group_idle: Duration,

    /// Groups tracked at most; past it the least recently active one is dropped (counted).
    #[arg(
        long,
        env = "TIMBRIDGE_AUDIT_MAX_GROUPS",
        default_value_t = 100_000,
        help_heading = "Auditor"
    )]
    pub audit_max_groups: usize,

    /// Seqs a group may hold above its contiguous point; past it its lowest gap is looked up at
    /// once, without waiting for the grace.
    #[arg(
        long,
        env = "TIMBRIDGE_AUDIT_MAX_PENDING",
        default_value_t = 10_000,
        help_heading = "Auditor"
    )]
    pub audit_max_pending: usize,

    /// Gaps queued per app for its REST worker.
    #[arg(
        long,
        env = "TIMBRIDGE_AUDIT_MAX_QUEUED_GAPS",
        default_value_t = 1024,
        help_heading = "Auditor"
    )]
    pub audit_max_queued_gaps: usize,

    /// The share (0 to 1) of live group messages compared with Tencent's history (From_Account,
    /// MsgBody, MsgTime, Random): a difference, or a seq Tencent does not have, is a `forged`
    /// event. Each sample is one REST call of the app's --rest-max-rate. 0: none.
    #[arg(long, env = "TIMBRIDGE_VERIFY_SAMPLE", default_value_t = 0.0, value_parser = parse_share, help_heading = "Auditor")]
    pub verify_sample: f64,

    /// Samples queued per app for verification; past it a sample is skipped (counted).
    #[arg(
        long,
        env = "TIMBRIDGE_VERIFY_QUEUE",
        default_value_t = 1000,
        help_heading = "Auditor"
    )]
    pub verify_queue: usize,

    /// The longest a group waits after failed lookups: 5 s after the first failure in a row,
    /// twice as long after each next one, up to this.
    #[arg(long, env = "TIMBRIDGE_AUDIT_RETRY_MAX", default_value = "5m", value_parser = parse_duration, help_heading = "Auditor")]
    pub audit_retry_max: Duration,

    /// The durable JetStream consumer the auditor reads the stream with.
    #[arg(
        long,
        env = "TIMBRIDGE_AUDIT_CONSUMER",
        default_value = "timbridge-audit",
        help_heading = "Auditor"
    )]
    pub audit_consumer: String,

    /// The JetStream key-value bucket of the per-group checkpoint.
    #[arg(
        long,
        env = "TIMBRIDGE_AUDIT_STATE_BUCKET",
        default_value = "timbridge-audit",
        help_heading = "Auditor"
    )]
    pub audit_state_bucket: String,

    /// Kafka: the topic of the per-group checkpoint (create it with cleanup.policy=compact).
    #[arg(
        long,
        env = "TIMBRIDGE_AUDIT_STATE_TOPIC",
        default_value = "timbridge-audit-state",
        help_heading = "Auditor"
    )]
    pub audit_state_topic: String,

    /// Where unrecoverable gaps are published: a subject inside the stream's subjects (NATS)
    /// or a topic (Kafka, created beforehand).
    #[arg(
        long,
        env = "TIMBRIDGE_AUDIT_EVENT_SUBJECT",
        default_value = "tim.audit.unrecoverable",
        help_heading = "Auditor"
    )]
    pub audit_event_subject: String,

    /// How often the per-group state is checkpointed (and the consumed records acknowledged).
    #[arg(long, env = "TIMBRIDGE_AUDIT_CHECKPOINT_INTERVAL", default_value = "1s", value_parser = parse_duration, help_heading = "Auditor")]
    pub audit_checkpoint_interval: Duration,

    /// Consumed records not yet acknowledged, at most (the consumer's max_ack_pending).
    #[arg(
        long,
        env = "TIMBRIDGE_AUDIT_MAX_ACK_PENDING",
        default_value_t = 10_000,
        help_heading = "Auditor"
    )]
    pub audit_max_ack_pending: usize,

    /// Replicas splitting the work: each audits the groups of the partitions (the bridge's
    /// --partitions) equal to its --audit-shard modulo this. On NATS the subject template
    /// must contain {partition}. Split --rest-max-rate among them.
    #[arg(
        long,
        env = "TIMBRIDGE_AUDIT_SHARDS",
        default_value_t = 1,
        help_heading = "Auditor"
    )]
    pub audit_shards: u32,

    /// This replica's shard, 0 to --audit-shards - 1, or `auto`: the number ending the host
    /// name (a StatefulSet pod's ordinal, `timbridge-audit-2` → 2).
    #[arg(
        long,
        env = "TIMBRIDGE_AUDIT_SHARD",
        default_value = "0",
        help_heading = "Auditor"
    )]
    pub audit_shard: String,

    #[command(flatten)]
    pub ordered: OrderedArgs,

    /// Tencent REST calls per second per app, all kinds together (Tencent allows 200, shared
    /// with the app's own backend).
    #[arg(
        long,
        env = "TIMBRIDGE_REST_MAX_RATE",
        default_value_t = 20,
        help_heading = "Tencent REST API"
    )]
    pub rest_max_rate: u32,

    /// Validity of the admin UserSig; a new one is made when a tenth is left.
    #[arg(long, env = "TIMBRIDGE_REST_USERSIG_TTL", default_value = "1d", value_parser = parse_duration, help_heading = "Tencent REST API")]
    pub rest_usersig_ttl: Duration,

    /// One REST exchange, connect included.
    #[arg(long, env = "TIMBRIDGE_REST_TIMEOUT", default_value = "5s", value_parser = parse_duration, help_heading = "Tencent REST API")]
    pub rest_timeout: Duration,

    /// Attempts per REST call for rate-limit, 10002 and network errors (backoff between).
    #[arg(
        long,
        env = "TIMBRIDGE_REST_ATTEMPTS",
        default_value_t = 6,
        help_heading = "Tencent REST API"
    )]
    pub rest_attempts: usize,

    /// Longest pause between two attempts.
    #[arg(long, env = "TIMBRIDGE_REST_RETRY_MAX", default_value = "10s", value_parser = parse_duration, help_heading = "Tencent REST API")]
    pub rest_retry_max: Duration,

    #[command(flatten)]
    pub rest_endpoint: RestEndpointArgs,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl AuditArgs {
    pub fn into_config(self) -> Result<AuditConfig, ConfigError> {
        if self.rest_max_rate == 0 || self.rest_max_rate > 200 {
            return Err(ConfigError::new(
                "--rest-max-rate",
                "must be 1 to 200 (Tencent's limit per app)",
            ));
        }
        if self.partitions == 0 {
            return Err(ConfigError::new("--partitions", "must be more than 0"));
        }
        if self.audit_group_idle < self.tail_window {
            return Err(ConfigError::new(
                "--audit-group-idle",
                "must be at least --tail-window",
            ));
        }
        for (flag, value) in [
            ("--audit-max-groups", self.audit_max_groups),
            ("--audit-max-pending", self.audit_max_pending),
            ("--audit-max-ack-pending", self.audit_max_ack_pending),
            ("--rest-attempts", self.rest_attempts),
        ] {
            if value == 0 {
                return Err(ConfigError::new(flag, "must be more than 0"));
            }
        }
        for (flag, value) in [
            ("--tail-interval", self.tail_interval),
            (
                "--audit-checkpoint-interval",
                self.audit_checkpoint_interval,
            ),
            ("--rest-timeout", self.rest_timeout),
            ("--audit-retry-max", self.audit_retry_max),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(flag, "must be more than 0"));
            }
        }
        let sink = match self.sink {
            SinkKind::Nats => SinkConfig::Nats(self.nats.into_config()?),
            SinkKind::Kafka => SinkConfig::Kafka(self.kafka.into_config(self.publish_timeout)?),
            SinkKind::Stdout => {
                return Err(ConfigError::new(
                    "--sink",
                    "the auditor reads NATS or Kafka, not stdout",
                ))
            }
        };
        let host = || std::env::var("HOSTNAME").unwrap_or_default();
        let shard = shard(&self.audit_shard, self.audit_shards, self.partitions, host)?;
        if shard.count > 1 {
            if let SinkConfig::Nats(nats) = &sink {
                if !nats.subject.uses_partition() {
                    return Err(ConfigError::new(
                        "--audit-shards",
                        "on NATS the subject template (--nats-subject) must contain {partition} to split the stream",
                    ));
                }
            }
        }
        let ordered =
            self.ordered
                .into_config(&sink, &self.audit_state_topic, &self.audit_event_subject)?;
        let apps = crate::app::config::file::read_apps(&self.config, &sink)?;
        if !apps.iter().any(|app| app.rest.is_some()) {
            return Err(ConfigError::new(
                "--config",
                "no app has `rest:` credentials (region, identifier, secret_key): nothing to audit",
            ));
        }
        let endpoint = self.rest_endpoint.into_endpoint()?;
        Ok(AuditConfig {
            admin_listen: self.admin_listen,
            sink,
            publish_timeout: self.publish_timeout,
            partitions: self.partitions,
            apps,
            rest: RestConfig {
                max_rate: self.rest_max_rate,
                usersig_ttl: self.rest_usersig_ttl,
                timeout: self.rest_timeout,
                attempts: self.rest_attempts,
                retry_max: self.rest_retry_max,
                endpoint,
            },
            consumer: self.audit_consumer,
            state_bucket: self.audit_state_bucket,
            state_topic: self.audit_state_topic,
            event_subject: self.audit_event_subject,
            gap_grace: self.gap_grace,
            tail_window: self.tail_window,
            tail_interval: self.tail_interval,
            group_idle: self.audit_group_idle,
            max_groups: self.audit_max_groups,
            max_pending: self.audit_max_pending,
            checkpoint_interval: self.audit_checkpoint_interval,
            max_ack_pending: self.audit_max_ack_pending,
            max_queued_gaps: self.audit_max_queued_gaps,
            retry_max: self.audit_retry_max,
            shard,
            ordered,
            verify_sample: self.verify_sample,
            verify_queue: self.verify_queue,
        })
    }
}

/// A share between 0 and 1.
fn parse_share(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{value:?} is not a share between 0 and 1")),
    }
}

/// `--audit-shard` (a number or `auto`) of `--audit-shards`.
fn shard(
    index: &str,
    count: u32,
    partitions: u32,
    host: impl FnOnce() -> String,
) -> Result<Shard, ConfigError> {
    if count == 0 || count > partitions {
        return Err(ConfigError::new(
            "--audit-shards",
            "must be between 1 and --partitions (a shard reads whole partitions)",
        ));
    }
    let index: u32 = if index == "auto" {
        let host = host();
        host.rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                ConfigError::new(
                    "--audit-shard",
                    format!("auto: the host name {host:?} does not end in -<number>"),
                )
            })?
    } else {
        index
            .parse()
            .map_err(|_| ConfigError::new("--audit-shard", "a number or auto"))?
    };
    if index >= count {
        return Err(ConfigError::new(
            "--audit-shard",
            format!("{index} is not below --audit-shards ({count})"),
        ));
    }
    Ok(Shard { index, count })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::shard;
    use crate::audit::Shard;

    #[test]
    fn a_shard_is_a_number_below_the_count_or_the_pods_ordinal() {
        let host = || "prod-timbridge-audit-2".to_string();
        assert_eq!(
            shard("1", 2, 16, host).unwrap(),
            Shard { index: 1, count: 2 }
        );
        assert_eq!(
            shard("auto", 3, 16, host).unwrap(),
            Shard { index: 2, count: 3 }
        );
        assert!(shard("auto", 2, 16, host).is_err(), "ordinal 2 of 2 shards");
        assert!(shard("auto", 3, 16, || "audit".into()).is_err());
        assert!(shard("x", 2, 16, host).is_err());
        assert!(
            shard("0", 17, 16, host).is_err(),
            "more shards than partitions"
        );
        assert!(shard("0", 0, 16, host).is_err());
    }

    /// The auditor's configuration from `flags` (an apps file with REST credentials added).
    fn audit_config(flags: &[&str]) -> Result<crate::audit::AuditConfig, String> {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let apps = dir.path().join("apps.yaml");
        std::fs::write(
            &apps,
            "apps:\n  - sdkappid: 1400000000\n    unsigned: true\n    rest:\n      region: singapore\n      identifier: admin\n      secret_key: k\n",
        )
        .unwrap();
        let mut argv = vec!["timbridge", "audit", "--config", apps.to_str().unwrap()];
        argv.extend_from_slice(flags);
        let super::super::Command::Audit(args) = super::super::Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        else {
            panic!("audit")
        };
        args.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn the_rest_endpoint_is_https_unless_http_is_allowed() {
        audit_config(&["--rest-endpoint", "https://egress.example:8443"]).unwrap();
        let err = audit_config(&["--rest-endpoint", "http://127.0.0.1:9"]).unwrap_err();
        assert!(err.contains("--rest-endpoint: must be https://"), "{err}");
        audit_config(&["--rest-endpoint", "http://127.0.0.1:9", "--rest-allow-http"]).unwrap();
        let err = audit_config(&["--rest-endpoint", "127.0.0.1:9"]).unwrap_err();
        assert!(err.contains("--rest-endpoint"), "{err}");
    }

    #[test]
    fn the_ordered_stream_is_off_unless_asked_and_its_subject_is_checked() {
        assert!(audit_config(&[]).unwrap().ordered.is_none());
        let on = audit_config(&["--ordered-subject", "tim-ordered.{partition}"]).unwrap();
        match on.ordered.unwrap().output {
            crate::audit::ordered::OutputConfig::Nats {
                subject, stream, ..
            } => {
                assert_eq!(subject.wildcard(), "tim-ordered.*");
                assert_eq!(stream, "TIM_ORDERED");
            }
            other => panic!("{other:?}"),
        }
        for (flags, why) in [
            (&["--ordered-subject", "tim-ordered"][..], "{partition}"),
            (
                &["--ordered-subject", "tim.ordered.{partition}"][..],
                "inside the bridge's stream subject",
            ),
            (
                &["--ordered-subject", "o.{command}.{partition}"][..],
                "not {command}",
            ),
            (
                &[
                    "--ordered-subject",
                    "o.{partition}",
                    "--ordered-stream",
                    "TIM",
                ][..],
                "other than the bridge's",
            ),
            (&["--ordered-topic", "tim-ordered"][..], "--sink kafka"),
            (
                &[
                    "--ordered-subject",
                    "o.{partition}",
                    "--ordered-max-held-bytes",
                    "0",
                ][..],
                "more than 0",
            ),
        ] {
            let err = audit_config(flags).unwrap_err();
            assert!(err.contains(why), "{flags:?}: {err}");
        }
        let kafka = ["--sink", "kafka", "--kafka-brokers", "127.0.0.1:9092"];
        let with = |extra: &[&'static str]| [&kafka[..], extra].concat();
        let err = audit_config(&with(&[
            "--ordered-topic",
            "tim.Group.CallbackAfterSendMsg",
        ]))
        .unwrap_err();
        assert!(err.contains("a topic of its own"), "{err}");
        assert!(audit_config(&with(&["--ordered-topic", "tim-ordered"])).is_ok());
    }

    /// The README's auditor table lists exactly the auditor's own flags, with their defaults
    /// (the NATS flags and those shared with `serve` are documented in its table).
    #[test]
    fn the_readme_auditor_table_matches_the_flags() {
        let section = crate::core::readme::section("### Auditor flags");
        let documented: std::collections::BTreeMap<String, String> = section
            .lines()
            .filter(|l| l.starts_with("| `--"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let name = cells[1]
                    .trim_matches('`')
                    .trim_start_matches("--")
                    .to_owned();
                (name, cells[2].trim_matches('`').replace('—', ""))
            })
            .collect();
        let cli = super::super::Cli::command();
        let audit = cli.find_subcommand("audit").expect("audit");
        let shared = [
            "config",
            "admin-listen",
            "sink",
            "publish-timeout",
            "partitions",
            "log-level",
            "help",
        ];
        let actual: std::collections::BTreeMap<String, String> = audit
            .get_arguments()
            .filter_map(|arg| Some((arg.get_long()?, arg)))
            .filter(|(long, _)| {
                !long.starts_with("nats-") && !long.starts_with("kafka-") && !shared.contains(long)
            })
            .map(|(long, arg)| {
                let defaults: Vec<String> = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                (long.to_owned(), defaults.join(","))
            })
            .collect();
        assert_eq!(documented, actual, "README (left) vs flags (right)");
    }
}

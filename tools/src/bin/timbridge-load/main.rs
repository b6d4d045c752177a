//! `timbridge-load`: sends callbacks the way Tencent's IM backend does, and checks what arrived.
//!
//! - `run`: keep-alive connections; N groups, each with its own MsgSeq sequence and its messages
//!   sent one after another (a group is pinned to one connection); bodies shaped like Tencent's;
//!   signed URLs with `--token`. With `--rate` it is open-loop: sends are scheduled by the clock
//!   and latency is measured from the scheduled time, so a slow server cannot hide its queueing
//!   (no coordinated omission). Without `--rate` it is closed-loop: every connection sends as fast
//!   as answers come. Prints a JSON summary with HDR-histogram percentiles.
//! - `verify`: reads the JetStream stream or Kafka topic back and reports missing, duplicated and
//!   out-of-order messages per group against the summaries of earlier runs. `--ordered` checks the
//!   auditor's ordered stream: every seq once, a message or a marker, strictly in order.

#![forbid(unsafe_code)]

mod body;
mod client;
mod verify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;
use timbridge::app::cli::parse::parse_duration;
use timbridge::tencent::callback::sign;
use timbridge::tencent::callback::Token;
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(
    name = "timbridge-load",
    version,
    about = "Load generator and verifier for timbridge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send callbacks and print a JSON summary.
    Run(RunArgs),
    /// Read the stream/topic back and check it against run summaries.
    Verify(VerifyArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The bridge's callback endpoint; repeat it for several bridges (replicas), connection c
    /// using the (c mod n)-th.
    #[arg(long, default_value = "http://127.0.0.1:8080/callback")]
    url: Vec<String>,
    #[arg(long, default_value_t = 1400000000)]
    sdkappid: u64,
    /// Sign URLs with this token (Sign + RequestTime).
    #[arg(long)]
    token: Option<String>,
    /// Number of groups; each has its own MsgSeq sequence from 1.
    #[arg(long, default_value_t = 100)]
    groups: usize,
    /// GroupId prefix (the group number is appended); use a new one per run to verify runs apart.
    #[arg(long, default_value = "@TGS#load-")]
    group_prefix: String,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Open loop at this many callbacks per second; without it, closed loop at the maximum.
    #[arg(long)]
    rate: Option<f64>,
    /// Write the summary here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Leave out this percentage of callbacks at random (deterministic per group and seq; never
    /// a group's first, where an auditor starts watching): messages Tencent sent that never
    /// arrived. The summary lists them (`skipped`).
    #[arg(long, default_value_t = 0.0)]
    skip_percent: f64,
    /// Every Nth MsgSeq of a group is a system notice (a member joined, ...): Tencent sends no
    /// callback for it, but it takes the seq. 0: none.
    #[arg(long, default_value_t = 0)]
    system_every: u64,
    /// Write every message of the run (sent, skipped and system notices) here, one JSON object
    /// per line in the shape of Tencent's group history, for a simulator of it.
    #[arg(long)]
    history_out: Option<PathBuf>,
    /// Open loop: deal each group's messages over every connection in turn instead of one
    /// connection per group, so several of a group are in flight at once (Tencent documents
    /// no ordering between a group's callbacks).
    #[arg(long)]
    spread: bool,
    /// Pad each body's CloudCustomData so that the body is at least this many bytes (for cost
    /// against body size); 0: Tencent-sized bodies of 0.3–2 KB.
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
}

/// Why a scheduled seq is not sent.
enum Unsent {
    Skipped,
    System,
}

impl RunArgs {
    fn unsent(&self, group: usize, seq: u64) -> Option<Unsent> {
        if self.system_every > 0 && seq.is_multiple_of(self.system_every) {
            return Some(Unsent::System);
        }
        if seq > 1 && self.skip_percent > 0.0 {
            // A fixed hash of (group, seq): the same run skips the same messages.
            let h = (group as u64 ^ 0x5851_F42D_4C95_7F2D)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(seq.wrapping_mul(0xD1B5_4A32_D192_ED03));
            let h = (h ^ (h >> 31)).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            if (h as f64 / (1u64 << 53) as f64) * 100.0 < self.skip_percent {
                return Some(Unsent::Skipped);
            }
        }
        None
    }
}

#[derive(Args)]
struct VerifyArgs {
    /// Summaries written by `run --out` (repeatable).
    #[arg(long = "expect", required = true)]
    expect: Vec<PathBuf>,
    #[arg(long)]
    nats_url: Option<String>,
    #[arg(long, default_value = "TIM")]
    nats_stream: String,
    /// NATS: read only the stream's messages of this subject (e.g. `tim-ordered.>`).
    #[arg(long)]
    nats_subject: Option<String>,
    #[arg(long)]
    kafka_brokers: Option<String>,
    #[arg(long, default_value = "tim.Group.CallbackAfterSendMsg")]
    kafka_topic: String,
    /// The runs' skipped messages must be in the stream (an auditor backfilled them).
    #[arg(long)]
    skipped_must_arrive: bool,
    /// Check the auditor's ordered stream (give its stream or topic with `--nats-stream` or
    /// `--kafka-topic`): per group every seq once, as a message or a marker, each the one after
    /// the last (backfills too), and markers only for system notices and skipped seqs. Kafka is
    /// read `read_committed`.
    #[arg(long)]
    ordered: bool,
}

#[derive(Serialize, serde::Deserialize)]
struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    mean: f64,
}

#[derive(Serialize)]
struct Summary {
    mode: &'static str,
    target_rate: Option<f64>,
    duration_s: f64,
    connections: usize,
    groups: usize,
    sent: u64,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    connection_errors: u64,
    /// Open loop: scheduled sends dropped because a connection's queue was full.
    missed: u64,
    ok_per_s: f64,
    latency_us: Latency,
    last_seq: BTreeMap<String, u64>,
    not_ok: BTreeMap<String, Vec<u64>>,
    /// `--skip-percent`: left out on purpose.
    skipped: BTreeMap<String, Vec<u64>>,
    /// `--system-every`: seqs of system notices (never sent).
    system: BTreeMap<String, Vec<u64>>,
}

/// What one connection worker did.
struct WorkerResult {
    histogram: Histogram<u64>,
    sent: u64,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    connection_errors: u64,
    last_seq: BTreeMap<String, u64>,
    not_ok: BTreeMap<String, Vec<u64>>,
    skipped: BTreeMap<String, Vec<u64>>,
    system: BTreeMap<String, Vec<u64>>,
}

/// A scheduled send: which group (by index) and when it was due.
struct Job {
    group: usize,
    seq: u64,
    due: Instant,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => match run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("timbridge-load: {e}");
                ExitCode::from(2)
            }
        },
        Command::Verify(args) => verify_command(args).await,
    }
}

fn target(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or(format!("{host}: no address"))?;
    Ok((addr, host.to_owned(), format!("/{path}")))
}

/// The request bytes for one callback (signed when a token is given).
fn encode(
    args: &RunArgs,
    host: &str,
    path: &str,
    token: Option<&Token>,
    group: usize,
    seq: u64,
) -> Vec<u8> {
    let group_id = format!("{}{group}", args.group_prefix);
    let body = body::group_message(group, &group_id, seq, args.body_bytes);
    let mut query = format!(
        "SdkAppid={}&CallbackCommand=Group.CallbackAfterSendMsg&contenttype=json&ClientIP=10.0.0.{}&OptPlatform=Android",
        args.sdkappid,
        group % 250
    );
    if let Some(token) = token {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        query.push_str(&format!("&RequestTime={now}&Sign={}", sign(token, &now)));
    }
    let mut request = format!(
        "POST {path}?{query} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

async fn run(args: RunArgs) -> Result<(), String> {
    if args.groups == 0 || args.connections == 0 {
        return Err("--groups and --connections must be more than 0".into());
    }
    let targets = args
        .url
        .iter()
        .map(|url| target(url))
        .collect::<Result<Vec<_>, String>>()?;
    let token = args.token.clone().map(Token::new);
    let connections = args.connections.min(args.groups);
    let started = Instant::now();
    let end = started + args.duration;

    let mut workers = Vec::new();
    let mut queues = Vec::new();
    for c in 0..connections {
        // Groups c, c + connections, ... belong to connection c: a group's messages are sent one
        // after another, in MsgSeq order, as Tencent sends them.
        let groups: Vec<usize> = (c..args.groups).step_by(connections).collect();
        let (tx, rx) = mpsc::channel::<Job>(4096);
        queues.push(tx);
        let (addr, host, path) = targets[c % targets.len()].clone();
        let worker = Worker {
            args: args.clone(),
            addr,
            host,
            path,
            token: token.clone(),
        };
        workers.push(tokio::spawn(async move {
            if worker.args.rate.is_some() {
                worker.open_loop(rx).await
            } else {
                drop(rx);
                worker.closed_loop(groups, end).await
            }
        }));
    }

    let mut missed = 0u64;
    if let Some(rate) = args.rate {
        // The clock decides when each callback is due; a worker that falls behind does not slow
        // the schedule down (its queue fills, and what does not fit is counted as missed). The
        // schedule runs on its own OS thread: tokio's timer rounds to whole milliseconds, which
        // would add up to 1 ms of the generator's own lateness to every latency.
        let groups = args.groups;
        let spread = args.spread;
        let schedule = std::thread::spawn(move || {
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut next_seq = vec![0u64; groups];
            let mut missed = 0u64;
            let mut n: u64 = 0;
            loop {
                let due = started + interval.mul_f64(n as f64);
                if due >= end {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let group = (n as usize) % groups;
                let job = Job {
                    group,
                    seq: next_seq[group] + 1,
                    due,
                };
                let queue = if spread {
                    (group + job.seq as usize) % connections
                } else {
                    group % connections
                };
                match queues[queue].try_send(job) {
                    Ok(()) => next_seq[group] += 1,
                    Err(_) => missed += 1,
                }
                n += 1;
            }
            missed
        });
        missed = tokio::task::spawn_blocking(move || schedule.join().unwrap_or(0))
            .await
            .map_err(|e| e.to_string())?;
    } else {
        drop(queues);
    }
    // The queues are closed now (dropped with the schedule): the open-loop workers end once
    // they sent what was scheduled.

    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut summary = Summary {
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        target_rate: args.rate,
        duration_s: 0.0,
        connections,
        groups: args.groups,
        sent: 0,
        ok: 0,
        statuses: BTreeMap::new(),
        connection_errors: 0,
        missed,
        ok_per_s: 0.0,
        latency_us: Latency {
            p50: 0,
            p90: 0,
            p99: 0,
            p999: 0,
            max: 0,
            mean: 0.0,
        },
        last_seq: BTreeMap::new(),
        not_ok: BTreeMap::new(),
        skipped: BTreeMap::new(),
        system: BTreeMap::new(),
    };
    for w in workers {
        let r = w.await.map_err(|e| e.to_string())?;
        histogram.add(&r.histogram).map_err(|e| e.to_string())?;
        summary.sent += r.sent;
        summary.ok += r.ok;
        summary.connection_errors += r.connection_errors;
        for (s, n) in r.statuses {
            *summary.statuses.entry(s).or_default() += n;
        }
        // With --spread a group's seqs are spread over workers: merge, never replace.
        for (group, seq) in r.last_seq {
            let last = summary.last_seq.entry(group).or_default();
            *last = (*last).max(seq);
        }
        for (mine, theirs) in [
            (&mut summary.not_ok, r.not_ok),
            (&mut summary.skipped, r.skipped),
            (&mut summary.system, r.system),
        ] {
            for (group, seqs) in theirs {
                let all = mine.entry(group).or_default();
                all.extend(seqs);
                all.sort_unstable();
            }
        }
    }
    if let Some(path) = &args.history_out {
        write_history(&args, &summary.last_seq, path)?;
    }
    summary.duration_s = started.elapsed().as_secs_f64();
    summary.ok_per_s = summary.ok as f64 / args.duration.as_secs_f64();
    summary.latency_us = Latency {
        p50: histogram.value_at_quantile(0.50),
        p90: histogram.value_at_quantile(0.90),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
        max: histogram.max(),
        mean: histogram.mean(),
    };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    println!("{json}");
    Ok(())
}

/// Every message of the run, in the shape of `group_msg_get_simple`'s `RspMsgList` items plus
/// `GroupId`, one per line.
fn write_history(
    args: &RunArgs,
    last_seq: &BTreeMap<String, u64>,
    path: &std::path::Path,
) -> Result<(), String> {
    let mut out = String::new();
    for group in 0..args.groups {
        let group_id = format!("{}{group}", args.group_prefix);
        let Some(&last) = last_seq.get(&group_id) else {
            continue;
        };
        for seq in 1..=last {
            let body: serde_json::Value =
                serde_json::from_str(&body::group_message(group, &group_id, seq, args.body_bytes))
                    .map_err(|e| e.to_string())?;
            let system = matches!(args.unsent(group, seq), Some(Unsent::System));
            let item = serde_json::json!({
                "GroupId": group_id,
                "MsgSeq": seq,
                "From_Account": body["From_Account"],
                "MsgRandom": body["Random"],
                "MsgTimeStamp": body["MsgTime"],
                "MsgBody": if system { serde_json::json!([]) } else { body["MsgBody"].clone() },
                "IsSystemMsg": u8::from(system),
                "IsPlaceMsg": 0,
            });
            out.push_str(&item.to_string());
            out.push('\n');
        }
    }
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))
}

struct Worker {
    args: RunArgs,
    addr: SocketAddr,
    host: String,
    path: String,
    token: Option<Token>,
}

impl Worker {
    fn result(&self) -> WorkerResult {
        WorkerResult {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            sent: 0,
            ok: 0,
            statuses: BTreeMap::new(),
            connection_errors: 0,
            last_seq: BTreeMap::new(),
            not_ok: BTreeMap::new(),
            skipped: BTreeMap::new(),
            system: BTreeMap::new(),
        }
    }

    async fn send(
        &self,
        conn: &mut client::Connection,
        r: &mut WorkerResult,
        group: usize,
        seq: u64,
        since: Instant,
    ) {
        if let Some(unsent) = self.args.unsent(group, seq) {
            let group_id = format!("{}{group}", self.args.group_prefix);
            r.last_seq.insert(group_id.clone(), seq);
            let list = match unsent {
                Unsent::Skipped => &mut r.skipped,
                Unsent::System => &mut r.system,
            };
            list.entry(group_id).or_default().push(seq);
            return;
        }
        let request = encode(
            &self.args,
            &self.host,
            &self.path,
            self.token.as_ref(),
            group,
            seq,
        );
        let answer = conn.send(&request).await;
        let micros = since.elapsed().as_micros().max(1) as u64;
        let _ = r.histogram.record(micros.min(60_000_000));
        r.sent += 1;
        let group_id = format!("{}{group}", self.args.group_prefix);
        r.last_seq.insert(group_id.clone(), seq);
        match answer {
            Ok(resp) if resp.status == 200 && resp.ok_body => {
                r.ok += 1;
                *r.statuses.entry(200).or_default() += 1;
            }
            Ok(resp) => {
                *r.statuses.entry(resp.status).or_default() += 1;
                r.not_ok.entry(group_id).or_default().push(seq);
            }
            Err(_) => {
                r.connection_errors += 1;
                r.not_ok.entry(group_id).or_default().push(seq);
            }
        }
    }

    async fn open_loop(self, mut rx: mpsc::Receiver<Job>) -> WorkerResult {
        let mut r = self.result();
        let mut conn = client::Connection::new(self.addr);
        while let Some(job) = rx.recv().await {
            self.send(&mut conn, &mut r, job.group, job.seq, job.due)
                .await;
        }
        r
    }

    async fn closed_loop(self, groups: Vec<usize>, end: Instant) -> WorkerResult {
        let mut r = self.result();
        let mut conn = client::Connection::new(self.addr);
        let mut seqs = vec![0u64; groups.len()];
        let mut i = 0;
        while Instant::now() < end {
            let slot = i % groups.len();
            seqs[slot] += 1;
            self.send(&mut conn, &mut r, groups[slot], seqs[slot], Instant::now())
                .await;
            i += 1;
        }
        r
    }
}

async fn verify_command(args: VerifyArgs) -> ExitCode {
    let mut expected = Vec::new();
    for path in &args.expect {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("timbridge-load: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        match serde_json::from_str::<verify::Expected>(&text) {
            Ok(e) => expected.push(e),
            Err(e) => {
                eprintln!("timbridge-load: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let stored = match (&args.nats_url, &args.kafka_brokers) {
        (Some(url), None) => {
            let subject = args.nats_subject.as_deref();
            verify::read_nats(url, &args.nats_stream, subject).await
        }
        (None, Some(brokers)) => {
            let (b, t, committed) = (brokers.clone(), args.kafka_topic.clone(), args.ordered);
            tokio::task::spawn_blocking(move || verify::read_kafka(&b, &t, committed))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
        _ => Err("give exactly one of --nats-url and --kafka-brokers".into()),
    };
    let stored = match stored {
        Ok(s) => s,
        Err(e) => {
            eprintln!("timbridge-load: {e}");
            return ExitCode::from(2);
        }
    };
    let report = if args.ordered {
        verify::check_ordered(&expected, &stored)
    } else {
        let mut report = verify::check(&expected, &stored.messages(), args.skipped_must_arrive);
        report.passthrough = stored.passthrough;
        report
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! The fault matrix: every file operation of the spool (open, write, fdatasync, read, rename,
//! unlink) × {EIO, ENOSPC, a short write} × {start-up, writes, forwarding, deletion}, injected
//! through the spool's own file layer (`fs.rs`). For each cell: every record answered before,
//! during or after the fault is forwarded after a restart (none lost), and the spool either
//! kept serving or failed for good (the process exits 74); duplicates after the restart are
//! counted (they carry their dedup id). docs/spool.md reports the figures.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::fs::faults::{self, Fault, Kind};
use super::fs::Op;
use super::tests::{test_config, TestMetrics};
use super::*;
use crate::core::deliver::scripted::{Outcome, Scripted};
use crate::core::record::header;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Startup,
    Writes,
    Forwarding,
    Deletion,
}

#[derive(Debug, Default)]
struct Cell {
    answered: usize,
    lost: usize,
    duplicates: usize,
    injected: usize,
    fatal: bool,
}

fn dedup_id(record: &Record) -> String {
    record
        .headers
        .iter()
        .find(|(n, _)| *n == header::DEDUP_ID)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A record with a body large enough that a few dozen fill a segment.
fn record(seq: u64) -> Record {
    let mut r = super::frame::tests::record(&format!("k{}", seq % 7), seq);
    r.body = Bytes::from(format!(
        r#"{{"MsgSeq":{seq},"Text":"{}"}}"#,
        "x".repeat(200)
    ));
    r
}

fn config(dir: &std::path::Path) -> SpoolConfig {
    let mut config = test_config(dir);
    config.segment_bytes = 8 << 10;
    config.max_bytes = 16 << 20;
    config.batch_records = 8;
    config.memory_bytes = 2 << 10;
    config.position_interval = Duration::from_millis(5);
    config.forward_retry_max = Duration::from_millis(100);
    config
}

/// Waits (bounded) until the spool forwarded everything it holds, or failed.
async fn settle(spool: &Spool<Scripted>, metrics: &TestMetrics) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !spool.fatal().is_cancelled()
        && !(spool.is_recovered() && metrics.spool().unforwarded.get() == 0)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens the spool; `None` when it failed at start-up (the process would exit 74).
async fn start(dir: &std::path::Path, ready: bool) -> Option<(Spool<Scripted>, TestMetrics)> {
    let metrics = TestMetrics::new();
    let sink = Scripted::new(Outcome::Ok);
    sink.set_ready(ready);
    let spool = match Spool::open(config(dir), sink, metrics.spool(), None) {
        Ok(spool) => spool,
        Err(err) => {
            eprintln!("the spool does not open: {err}");
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !spool.is_recovered() {
        if spool.fatal().is_cancelled() || Instant::now() > deadline {
            eprintln!(
                "the spool does not recover: fatal {}, after {:?}",
                spool.fatal().is_cancelled(),
                deadline.elapsed()
            );
            spool.close(Duration::from_secs(1)).await;
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Some((spool, metrics))
}

async fn append(spool: &Spool<Scripted>, seqs: std::ops::Range<u64>, answered: &mut Vec<String>) {
    for seq in seqs {
        let r = record(seq);
        if spool.deliver(&r).await.is_ok() {
            answered.push(dedup_id(&r));
        }
    }
}

async fn run_cell(op: Op, kind: Kind, phase: Phase) -> Cell {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_owned();
    let fault = Fault {
        dir: dir.clone(),
        op,
        kind,
        skip: 1,
        times: 1,
    };
    let mut answered = Vec::new();
    let mut delivered: Vec<Record> = Vec::new();
    let mut cell = Cell::default();

    // The previous process: records left unforwarded for the start-up phase, or records
    // forwarded with their segments deleted before the deletion phase.
    if matches!(phase, Phase::Startup | Phase::Deletion) {
        let (spool, metrics) = start(&dir, phase == Phase::Deletion).await.unwrap();
        append(&spool, 0..60, &mut answered).await;
        settle(&spool, &metrics).await;
        spool.close(Duration::from_secs(2)).await;
        delivered.extend(spool.sink().delivered());
    }
    if phase == Phase::Startup {
        faults::inject(fault.clone());
    }
    // While writes fail the broker is away, so that what was answered is on disk only and
    // the restart must read it back (the memory tail would hide a write that never happened).
    let ready = !matches!(phase, Phase::Forwarding | Phase::Writes);
    if let Some((spool, metrics)) = start(&dir, ready).await {
        match phase {
            Phase::Startup => append(&spool, 100..160, &mut answered).await,
            Phase::Writes => {
                append(&spool, 100..120, &mut answered).await;
                faults::inject(fault.clone());
                append(&spool, 120..180, &mut answered).await;
            }
            Phase::Forwarding => {
                append(&spool, 100..180, &mut answered).await;
                faults::inject(fault.clone());
                spool.sink().set_ready(true);
            }
            Phase::Deletion => {
                faults::inject(fault.clone());
                append(&spool, 100..180, &mut answered).await;
            }
        }
        settle(&spool, &metrics).await;
        cell.fatal = spool.fatal().is_cancelled();
        spool.close(Duration::from_secs(2)).await;
        delivered.extend(spool.sink().delivered());
    } else {
        cell.fatal = true;
    }
    cell.injected = faults::clear(&dir);

    // The restart, with a healthy disk.
    let (spool, metrics) = start(&dir, true).await.expect("the restart recovers");
    settle(&spool, &metrics).await;
    spool.close(Duration::from_secs(2)).await;
    delivered.extend(spool.sink().delivered());

    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &delivered {
        *seen.entry(dedup_id(r)).or_default() += 1;
    }
    cell.answered = answered.len();
    cell.lost = answered.iter().filter(|id| !seen.contains_key(*id)).count();
    cell.duplicates = seen.values().map(|n| n - 1).sum();
    let unique: HashSet<&String> = answered.iter().collect();
    assert_eq!(unique.len(), answered.len(), "dedup ids are unique");
    cell
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_operation_failing_in_every_phase_loses_no_answered_record() {
    let started = Instant::now();
    let mut rows = Vec::new();
    let (mut cells, mut injected, mut answered, mut lost, mut duplicates) = (0, 0, 0, 0, 0);
    // The cells of one operation run at once (each in a directory of its own: the faults are
    // scoped by directory); most of a cell's time is spent waiting on fsyncs and backoffs.
    for op in Op::ALL {
        let kinds: &[Kind] = match op {
            Op::Write => &[
                Kind::Errno(libc::EIO),
                Kind::Errno(libc::ENOSPC),
                Kind::ShortWrite,
            ],
            _ => &[Kind::Errno(libc::EIO), Kind::Errno(libc::ENOSPC)],
        };
        let mut runs = Vec::new();
        for &kind in kinds {
            for phase in [
                Phase::Startup,
                Phase::Writes,
                Phase::Forwarding,
                Phase::Deletion,
            ] {
                runs.push(async move { (kind, phase, run_cell(op, kind, phase).await) });
            }
        }
        for (kind, phase, cell) in futures_util::future::join_all(runs).await {
            rows.push(format!(
                "{op:?} {kind:?} {phase:?}: injected {}, answered {}, lost {}, duplicates {}, {}",
                cell.injected,
                cell.answered,
                cell.lost,
                cell.duplicates,
                if cell.fatal {
                    "failed for good (exit 74)"
                } else {
                    "kept serving"
                }
            ));
            cells += 1;
            injected += cell.injected;
            answered += cell.answered;
            lost += cell.lost;
            duplicates += cell.duplicates;
        }
    }
    println!("{}", rows.join("\n"));
    println!(
        "cells {cells}, faults injected {injected}, answered {answered}, lost {lost}, \
         duplicates after restart {duplicates}, took {:?}",
        started.elapsed()
    );
    let losing: Vec<&String> = rows.iter().filter(|r| !r.contains(" lost 0,")).collect();
    assert!(losing.is_empty(), "answered records lost: {losing:#?}");
    assert!(
        injected >= cells / 2,
        "most cells met their fault: {injected} of {cells}"
    );
}

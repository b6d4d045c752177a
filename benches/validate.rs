//! What the whole-body UTF-8 check costs next to the body's validation, per fixture:
//! `cargo bench --bench validate`. Under `cargo test` (no `--bench` argument) each measurement
//! runs once, so the target stays built and working.

use std::hint::black_box;
use std::time::{Duration, Instant};

use timbridge::tencent::callback::body;

fn per_call(iterations: u32, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..iterations {
        f();
    }
    started.elapsed() / iterations
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let iterations = if benchmarking { 200_000 } else { 1 };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    println!(
        "{:<40} {:>6} {:>12} {:>12} {:>7}",
        "fixture", "bytes", "utf8 check", "validation", "share"
    );
    for path in names {
        let bytes = std::fs::read(&path).expect("fixture");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        let command = v["CallbackCommand"].as_str().expect("command").to_owned();
        let utf8 = per_call(iterations, || {
            let _ = black_box(simdutf8::compat::from_utf8(black_box(&bytes)));
        });
        let parse = per_call(iterations, || {
            let _ = black_box(body::parse(black_box(&command), black_box(&bytes)));
        });
        println!(
            "{:<40} {:>6} {:>10?} {:>10?} {:>6.1}%",
            path.file_name().unwrap().to_string_lossy(),
            bytes.len(),
            utf8,
            parse,
            100.0 * utf8.as_secs_f64() / parse.as_secs_f64().max(1e-12)
        );
    }
}

#!/usr/bin/env python3
"""The ordered stream's cost: the auditor's CPU per consumed record with the ordered stream off
and on, and its release latency (main-stream append to ordered-stream store), with the bridge
at saturation (closed loop, every group's seqs in order, no holes) on NATS JetStream.

  python3 bench/ordered.py            # after `cargo build --release --workspace --bins`

Each run has a fresh nats-server (file storage), bridge and auditor; modes alternate off, on,
off, on... (BENCH_ROUNDS pairs, default 2), D seconds of load each (default 10). The auditor's
CPU comes from /proc/<pid>/stat from its start until it has consumed every record; latency
quantiles are interpolated in the buckets of timbridge_audit_ordered_release_latency_seconds,
as Prometheus' histogram_quantile does. Writes bench/out/ordered.json."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import spool  # noqa: E402

DURATION = int(os.environ.get("D", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
APP = 1400000000


def quantile(buckets, count, q):
    """histogram_quantile: linear within the bucket that holds the q-th observation."""
    lower_le, lower_c = 0.0, 0.0
    for le, c in buckets:
        if c >= q * count:
            if le == float("inf"):
                return lower_le
            return lower_le + (le - lower_le) * (q * count - lower_c) / max(c - lower_c, 1)
        lower_le, lower_c = le, c
    return float("inf")


def metric(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def run(mode, work, groups=None, extra=(), skip=0.0):
    store = Path(work) / f"js-{mode}-{time.monotonic_ns()}"
    port = bench.free_port()
    nats = spool.nats_server(port, store)
    bench.wait_port(port)

    class Brokers:
        nats_url = f"nats://127.0.0.1:{port}"
    bridge = bench.Server("nats", Brokers, work)
    config = Path(work) / "apps.yaml"
    config.write_text(
        f"apps:\n  - sdkappid: {APP}\n    unsigned: true\n    rest:\n      region: singapore\n"
        "      identifier: administrator\n      secret_key: unused\n")
    admin = bench.free_port()
    # No holes, so no lookups; the tail check is put off past the run (nothing answers REST).
    cmd = [str(bench.RELEASE / "timbridge"), "audit", "--config", str(config),
           "--nats-url", Brokers.nats_url, "--admin-listen", f"127.0.0.1:{admin}",
           "--rest-endpoint", "http://127.0.0.1:9", "--rest-allow-http", "--tail-interval", "1h", "--log-level", "warn"]
    if mode != "off":
        cmd += ["--ordered-subject", "tim-ordered.{partition}"]
    cmd += list(extra)
    log = open(Path(work) / f"audit-{mode}.log", "w")
    auditor = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    bench.wait_port(admin)
    cpu_before = bench.cpu_seconds(auditor.pid)
    # (the auditor's CPU and records are counted from here to when it has consumed them all)
    extra_load = ["--skip-percent", str(skip)] if skip else []
    result = load(bridge, f"ordered-{mode}", groups or bench.GROUPS, extra_load)
    records_seen = 0
    end = time.time() + 120
    text = ""
    while time.time() < end:
        with bench.urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            text = r.read().decode()
        records_seen = sum(metric(text, f'timbridge_audit_records_total{{kind="{k}"}}')
                           for k in ["in_order", "ahead", "regression", "repeat"])
        released = metric(text, 'timbridge_audit_ordered_released_total{kind="message"}')
        held = metric(text, "timbridge_audit_ordered_held_records")
        if records_seen >= result["ok"] and (mode == "off" or released + held >= result["ok"]):
            break
        time.sleep(0.05)
    cpu = bench.cpu_seconds(auditor.pid) - cpu_before
    out = {
        "mode": mode,
        "bridge_per_s": result["ok_per_s"],
        "records": records_seen,
        "auditor_cpu_us_per_record": cpu * 1e6 / max(records_seen, 1),
    }
    if mode == "held":
        out["groups"] = groups
        out["held_records"] = metric(text, "timbridge_audit_ordered_held_records")
        out["held_bytes_mib"] = metric(text, "timbridge_audit_ordered_held_bytes") / 2**20
        out["refetched"] = metric(text, "timbridge_audit_ordered_refetched_total")
        out["auditor_peak_rss_mib"] = bench.peak_rss_mib(auditor.pid)
        out["max_held"] = extra[-1]
    if mode == "on":
        buckets, _, count = spool.histogram(text, "timbridge_audit_ordered_release_latency_seconds")
        out["release_p50_ms"] = quantile(buckets, count, 0.5) * 1000
        out["release_p99_ms"] = quantile(buckets, count, 0.99) * 1000
    auditor.terminate()
    auditor.wait()
    bridge.stop()
    nats.kill()
    nats.wait()
    return out


def load(server, prefix, groups, extra):
    """bench.load's closed loop, with the group count and more flags for timbridge-load run."""
    out = bench.OUT / f"{server.target}-{prefix}.json"
    cmd = [str(bench.RELEASE / "timbridge-load"), "run", "--url", f"http://127.0.0.1:{server.port}/callback",
           "--groups", str(groups), "--connections", str(bench.CONNECTIONS),
           "--duration", f"{DURATION}s", "--group-prefix", f"@TGS#{prefix}-", "--out", str(out)] + extra
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main():
    bench.OUT.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="timbridge-ordered-")
    results = []
    for _ in range(ROUNDS):
        for mode in ["off", "on"]:
            r = run(mode, work)
            results.append(r)
            print(json.dumps(r), flush=True)
    off = [r["auditor_cpu_us_per_record"] for r in results if r["mode"] == "off"]
    on = [r["auditor_cpu_us_per_record"] for r in results if r["mode"] == "on"]
    ratio = (sum(on) / len(on)) / (sum(off) / len(off))
    print(f"auditor CPU per record: off {sum(off) / len(off):.1f} µs, on {sum(on) / len(on):.1f} µs, "
          f"ratio {ratio:.2f} (target <= 1.5)")
    # Memory: 10,000 groups, about one hole each (10% of callbacks left out), holes held for
    # the whole run (an hour of grace; the REST endpoint answers nothing, so a hole looked up
    # early for the memory bound stays), with the default bound and a quarter of it.
    held = []
    for bound in ["64MiB", "4MiB"]:
        r = run("held", work, groups=10000, skip=10.0,
                extra=["--gap-grace", "1h", "--ordered-max-held-bytes", bound])
        held.append(r)
        print(json.dumps(r), flush=True)
    (bench.OUT / "ordered.json").write_text(
        json.dumps({"runs": results, "ratio": ratio, "held": held}, indent=1))


if __name__ == "__main__":
    main()

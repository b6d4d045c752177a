#!/usr/bin/env python3
"""Spooled mode against direct mode (bench/spool.sh): the bench.py phases for baseline, nats and
nats-spooled (maximum, 50% and 90% of it, common rate in interleaved rounds), the spool's fsync
and group-commit figures, and the forwarder's drain rate after an outage. Prints a Markdown
section (also bench/out/spool.md) for docs/benchmarks.md."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("BENCH_TARGETS", "baseline nats nats-spooled")
os.environ["BENCH_NO_REPORT"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

OUTAGE = int(os.environ.get("BENCH_OUTAGE", "60"))
DRAIN_RATE = int(os.environ.get("BENCH_DRAIN_RATE", "2000"))


def histogram(text, name):
    """(buckets [(le, cumulative count)], sum, count) of a Prometheus histogram."""
    buckets, total, count = [], 0.0, 0
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
        elif line.startswith(name + "_sum"):
            total = float(line.split()[-1])
        elif line.startswith(name + "_count"):
            count = float(line.split()[-1])
    return buckets, total, count


def quantile(buckets, count, q):
    for le, c in buckets:
        if c >= q * count:
            return le
    return float("inf")


def gauge(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def nats_server(port, store):
    return subprocess.Popen(
        [shutil.which("nats-server") or "/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drain_after_outage(work):
    """Open-loop load at DRAIN_RATE with NATS stopped for OUTAGE s; then the time from NATS's
    return to an empty spool."""
    port = bench.free_port()
    store = Path(work) / "drain-nats"
    nats = nats_server(port, store)
    bench.wait_port(port)

    class Brokers:
        nats_url = f"nats://127.0.0.1:{port}"
    # The drain is measured with the default --forward-max-rate, whatever BENCH_SPOOL_FLAGS say.
    flags = os.environ.pop("BENCH_SPOOL_FLAGS", None)
    server = bench.Server("nats-spooled", Brokers, work)
    if flags is not None:
        os.environ["BENCH_SPOOL_FLAGS"] = flags
    nats.kill()
    nats.wait()
    summary = bench.load(server, "outage", rate=DRAIN_RATE, duration=OUTAGE, drained=False)
    backlog = gauge(server.metrics(), "timbridge_spool_unforwarded_records")
    started = time.time()
    nats = nats_server(port, store)
    while gauge(server.metrics(), "timbridge_spool_unforwarded_records") > 0:
        if time.time() - started > 600:
            raise RuntimeError("the spool did not drain in 10 minutes")
        time.sleep(0.05)
    took = time.time() - started
    server.stop()
    nats.kill()
    nats.wait()
    return {
        "sent": summary["sent"], "ok": summary["ok"], "backlog": backlog, "drain_s": took,
        "drain_per_s": backlog / took if took else 0.0, "arrival_per_s": summary["sent"] / OUTAGE,
    }


def main():
    results, common = bench.main()
    spooled, direct, base = results["nats-spooled"], results["nats"], results.get("baseline")
    text = spooled["spool_metrics"]
    fsync, fsync_sum, fsync_count = histogram(text, "timbridge_spool_fsync_duration_seconds")
    _, batch_sum, batch_count = histogram(text, "timbridge_spool_batch_records")
    work = tempfile.mkdtemp(prefix="timbridge-spool-bench-")
    drain = drain_after_outage(work) if OUTAGE > 0 else None
    shutil.rmtree(work, ignore_errors=True)
    p = lambda r, ph: r["phases"][ph]  # noqa: E731
    fsync_p99_ms = quantile(fsync, fsync_count, 0.99) * 1000
    rows = []
    for name, r in (("baseline", base), ("nats (direct)", direct), ("nats-spooled", spooled)):
        if r is None:
            continue
        lat = lambda ph: f"{p(r, ph)['latency_us']['p50']/1000:.2f} / {p(r, ph)['latency_us']['p99']/1000:.2f}"  # noqa: E731
        rows.append(f"| {name} | {p(r, 'max')['ok_per_s']:.0f} | {p(r, 'max')['cpu_us_per_callback']:.1f} | "
                    f"{p(r, 'common')['cpu_us_per_callback']:.1f} ({'/'.join(f'{c:.0f}' for c in r['common_rounds_cpu_us'])}) | "
                    f"{lat('p50')} | {lat('p90')} | {r.get('verify', {}).get('missing', '-')} |")
    ratio_max = p(spooled, "max")["cpu_us_per_callback"] / p(direct, "max")["cpu_us_per_callback"]
    ratio_common = p(spooled, "common")["cpu_us_per_callback"] / p(direct, "common")["cpu_us_per_callback"]
    drain_line = "- Drain: not measured (BENCH_OUTAGE=0).\n" if drain is None else f"""- Drain after a {OUTAGE} s NATS outage at {drain['arrival_per_s']:.0f} callbacks/s ({drain['ok']} of {drain['sent']} answered 200): {drain['backlog']:.0f} records forwarded in {drain['drain_s']:.1f} s = {drain['drain_per_s']:.0f}/s, {drain['drain_per_s'] / max(drain['arrival_per_s'], 1):.1f}× the arrival rate (--forward-max-rate 10000 by default).
"""
    out = f"""Closed loop over {bench.CONNECTIONS} connections; spooled flags: `{os.environ.get("BENCH_SPOOL_FLAGS", "") or "defaults"}`; a spooled phase's CPU counts until its records are forwarded.

| target | max/s (closed loop) | CPU µs/callback at max | at {common}/s, median (rounds) | p50 / p99 ms at 50% | at 90% | missing (verify) |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

- fdatasync: {fsync_count:.0f} in the spooled target's phases, mean {fsync_sum / max(fsync_count, 1) * 1000:.2f} ms, p99 ≤ {fsync_p99_ms:.1f} ms (histogram bucket); callbacks per fsync: mean {batch_sum / max(batch_count, 1):.1f}.
- Spooled vs direct CPU per callback: {ratio_max:.2f}× at each one's maximum, {ratio_common:.2f}× at {common}/s.
- Spooled p99 at 50% load: {p(spooled, 'p50')['latency_us']['p99']/1000:.2f} ms; target 3 × fsync p99 + 1 ms = {3 * fsync_p99_ms + 1:.1f} ms.
""" + drain_line
    suffix = "" if bench.CONNECTIONS == 16 else f"-c{bench.CONNECTIONS}"
    (bench.OUT / f"spool{suffix}.md").write_text(out)
    (bench.OUT / f"spool{suffix}.json").write_text(json.dumps({"drain": drain, "fsync_p99_ms": fsync_p99_ms,
                                                        "batch_mean": batch_sum / max(batch_count, 1)}, indent=2))
    print(out)


if __name__ == "__main__":
    main()

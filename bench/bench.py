#!/usr/bin/env python3
"""Runs the benchmark phases and writes docs/benchmarks.md (see bench/run.sh)."""

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# BENCH_RELEASE: another build's binaries (an A/B against an older commit's build).
RELEASE = Path(os.environ.get("BENCH_RELEASE", ROOT / "target" / "release"))
OUT = ROOT / "bench" / "out"
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
# Open loop needs more connections: each carries its groups one request at a time, so at high
# rates too few connections would queue inside the generator (Tencent opens more as needed).
OPEN_CONNECTIONS = int(os.environ.get("BENCH_OPEN_CONNECTIONS", "64"))
GROUPS = int(os.environ.get("BENCH_GROUPS", "200"))
TARGETS = os.environ.get("BENCH_TARGETS", "baseline stdout nats kafka").split()
TICK = os.sysconf("SC_CLK_TCK")
TOPIC = "tim.Group.CallbackAfterSendMsg"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# Callbacks are signed as Tencent signs them (the bridge checks Sign and RequestTime, and
# remembers each for replays); BENCH_TOKEN= (empty) sends unsigned ones to --allow-any-sdkappid.
TOKEN = os.environ.get("BENCH_TOKEN", "bench-token")
SDKAPPID = "1400000000"
# Bodies padded to at least this many bytes (timbridge-load --body-bytes); 0: 0.3–2 KB.
BODY_BYTES = int(os.environ.get("BENCH_BODY_BYTES", "0"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def http_status(url):
    try:
        return urllib.request.urlopen(url, timeout=1).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def cpu_seconds(pid):
    """user + system CPU of all threads of the process (librdkafka's included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Brokers:
    def __init__(self, workdir):
        self.procs = []
        self.nats_url = self.kafka = None
        if any(t.startswith("nats") for t in TARGETS):
            port = free_port()
            store = Path(workdir) / "nats"
            self.procs.append(subprocess.Popen(
                [shutil.which("nats-server") or "/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
            self.nats_url = f"nats://127.0.0.1:{port}"
        if any(t.startswith("kafka") for t in TARGETS):
            port = free_port()
            url = f"tcp://127.0.0.1:{port}"
            tansu = shutil.which("tansu") or str(Path.home() / ".cargo/bin/tansu")
            self.procs.append(subprocess.Popen(
                [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
            subprocess.run([tansu, "topic", "create", TOPIC, "--partitions", "16", "--broker", url],
                           check=True, stdout=subprocess.DEVNULL)
            self.kafka = f"127.0.0.1:{port}"

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


class Server:
    def __init__(self, target, brokers, log_dir):
        self.target = target
        self.port = free_port()
        self.admin = free_port()
        if target == "baseline":
            cmd = [str(RELEASE / "timbridge-baseline"), f"127.0.0.1:{self.port}"]
        else:
            cmd = [str(RELEASE / "timbridge"), "serve", "--log-level", "warn",
                   "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin}",
                   "--shutdown-delay", "0s"]
            cmd += ["--sdkappid", SDKAPPID, "--token", TOKEN] if TOKEN else ["--allow-any-sdkappid"]
            if target.startswith("nats"):
                cmd += ["--sink", "nats", "--nats-url", brokers.nats_url]
            elif target.startswith("kafka"):
                cmd += ["--sink", "kafka", "--kafka-brokers", brokers.kafka]
            if target.endswith("-spooled"):
                # Spooled mode on this machine's disk (ext4 on the VM's virtio disk), not tmpfs:
                # the fdatasync is real.
                self.spool = Path(log_dir) / f"spool-{self.port}"
                cmd += ["--spool-dir", str(self.spool)]
                cmd += os.environ.get("BENCH_SPOOL_FLAGS", "").split()
        self.log = open(Path(log_dir) / f"{target}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        wait_port(self.port)
        if target != "baseline":
            end = time.time() + 30
            while http_status(f"http://127.0.0.1:{self.admin}/readyz") != 200:
                if time.time() > end:
                    raise RuntimeError(f"{target}: not ready")
                time.sleep(0.1)

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def load(server, prefix, rate=None, duration=DURATION, drained=True):
    out = OUT / f"{server.target}-{prefix}.json"
    cmd = [str(RELEASE / "timbridge-load"), "run", "--url", f"http://127.0.0.1:{server.port}/callback",
           "--groups", str(GROUPS), "--connections", str(OPEN_CONNECTIONS if rate else CONNECTIONS),
           "--duration", f"{duration}s",
           "--group-prefix", f"@TGS#{server.target}-{prefix}-", "--out", str(out)]
    if rate:
        cmd += ["--rate", str(rate)]
    if TOKEN:
        cmd += ["--token", TOKEN, "--sdkappid", SDKAPPID]
    if BODY_BYTES:
        cmd += ["--body-bytes", str(BODY_BYTES)]
    before = cpu_seconds(server.proc.pid)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    if server.target.endswith("-spooled") and drained:
        # A callback's work ends when the forwarder has published it: past --forward-max-rate
        # (or while NATS is slower than the spool) the forwarder is still at it after the load.
        wait_forwarded(server)
    cpu = cpu_seconds(server.proc.pid) - before
    summary = json.loads(out.read_text())
    summary["cpu_us_per_callback"] = cpu * 1e6 / max(summary["sent"], 1)
    summary["summary_path"] = str(out)
    return summary


def wait_forwarded(server, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        for line in server.metrics().splitlines():
            if line.startswith("timbridge_spool_unforwarded_records ") and float(line.split()[-1]) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{server.target}: the spool did not drain in {timeout}s")


def verify(target, brokers, summaries):
    cmd = [str(RELEASE / "timbridge-load"), "verify"]
    for s in summaries:
        cmd += ["--expect", s["summary_path"]]
    if target.startswith("nats"):
        cmd += ["--nats-url", brokers.nats_url]
    else:
        cmd += ["--kafka-brokers", brokers.kafka, "--kafka-topic", TOPIC]
    result = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {"error": result.stderr.strip() or result.stdout.strip()}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="timbridge-bench-")
    brokers = Brokers(work)
    results = {}
    try:
        # Pass 1: each target's own maximum, then 50% and 90% of it.
        for target in TARGETS:
            server = Server(target, brokers, work)
            r = {"phases": {}}
            load(server, "warmup", duration=2)
            r["phases"]["max"] = load(server, "max")
            top = r["phases"]["max"]["ok_per_s"]
            r["phases"]["p50"] = load(server, "p50", rate=round(top * 0.5))
            r["phases"]["p90"] = load(server, "p90", rate=round(top * 0.9))
            r["peak_rss_mib"] = peak_rss_mib(server.proc.pid)
            if target.endswith("-spooled"):
                r["spool_metrics"] = server.metrics()
            server.stop()
            results[target] = r
            print(f"{target}: max {top:.0f}/s", file=sys.stderr)
        # Pass 2: every target at the same rate, for a like-for-like CPU comparison. Rounds
        # interleave the targets so that drift in the machine's speed (a shared VM) hits all
        # of them alike; the median round counts.
        common = round(0.4 * min(results[t]["phases"]["max"]["ok_per_s"] for t in TARGETS))
        rounds = {t: [] for t in TARGETS}
        for n in range(ROUNDS):
            for target in TARGETS:
                server = Server(target, brokers, work)
                rounds[target].append(load(server, f"common{n}", rate=common))
                results[target]["peak_rss_mib"] = max(results[target]["peak_rss_mib"], peak_rss_mib(server.proc.pid))
                server.stop()
        for target in TARGETS:
            ordered = sorted(rounds[target], key=lambda r: r["cpu_us_per_callback"])
            results[target]["phases"]["common"] = ordered[len(ordered) // 2]
            results[target]["common_rounds_cpu_us"] = [r["cpu_us_per_callback"] for r in rounds[target]]
            results[target]["common_rounds_non_200"] = sum(r["sent"] - r["ok"] + r["missed"] for r in rounds[target])
            if target != "baseline" and target != "stdout":
                phases = [p for name, p in results[target]["phases"].items() if name != "common"]
                results[target]["verify"] = verify(target, brokers, phases + rounds[target])
    finally:
        brokers.stop()
    results["_common_rate"] = common
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    if os.environ.get("BENCH_NO_REPORT"):
        return results, common
    write_report(results, common)
    return results, common


def machine():
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor())
    mem = next((int(l.split()[1]) // 1024 // 1024 for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({model}), {mem} GiB, {platform.system()} {platform.release()}"


def write_report(results, common):
    base = results.get("baseline")
    rows = []
    for t in TARGETS:
        r = results[t]
        p = r["phases"]
        def lat(phase):
            l = p[phase]["latency_us"]
            return f"{l['p50']/1000:.2f} / {l['p99']/1000:.2f} / {l['p999']/1000:.2f}"
        cpu_common = p["common"]["cpu_us_per_callback"]
        ratio = f"{cpu_common / base['phases']['common']['cpu_us_per_callback']:.2f}x" if base else "-"
        spread = "/".join(f"{c:.0f}" for c in r.get("common_rounds_cpu_us", []))
        errors = sum(p[ph]["sent"] - p[ph]["ok"] + p[ph]["missed"] for ph in p if ph != "common")
        errors += r.get("common_rounds_non_200", 0)
        v = r.get("verify")
        check = "-" if v is None else ("ok" if v.get("missing") == 0 and v.get("duplicated") == 0 and v.get("out_of_order") == 0 else
                                      f"missing {v.get('missing')}, dup {v.get('duplicated')}, order {v.get('out_of_order')} {v.get('error', '')}")
        rows.append(f"| {t} | {p['max']['ok_per_s']:.0f} | {lat('p50')} | {lat('p90')} | "
                    f"{p['max']['cpu_us_per_callback']:.1f} | {cpu_common:.1f} ({spread}) | {ratio} | {r['peak_rss_mib']:.0f} | {errors} | {check} |")
    text = f"""# Benchmarks

Measured by `bench/run.sh` on {machine()}, {time.strftime('%Y-%m-%d')}.
Load generator, bridge and brokers share this machine's cores: numbers are for comparing targets
with each other in one run, not absolute capacity. Each phase lasts {DURATION} s with {GROUPS}
groups (each group's messages sent one after another on its connection, bodies of 0.3–2 KB like
the fixtures) over {CONNECTIONS} keep-alive connections (closed loop) or {OPEN_CONNECTIONS} (open loop).

| target | max callbacks/s (closed loop) | latency ms p50 / p99 / p99.9 at 50% | at 90% | CPU µs/callback at max | CPU µs/callback at {common}/s, median (rounds) | vs baseline | peak RSS MiB | non-200 | verify |
|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

- **baseline**: `timbridge-baseline`, the smallest hyper 1.x server that reads the body, parses
  the JSON into a `serde_json::Value` and answers Tencent's OK (no checks, no publish): the
  ceiling for an HTTP+JSON service here.
- **stdout**: the bridge with the stdout sink, stdout to `/dev/null`.
- **nats**: the bridge publishing to a local nats-server (JetStream, file storage), 200 after the PubAck.
- **kafka**: the bridge producing to a local tansu broker (memory storage), 200 after the delivery report.
- Latency is end to end at the load generator, open loop (sends scheduled by the clock, measured
  from the scheduled time, so queueing is not hidden).
- CPU is user+system time of the server process from `/proc/<pid>/stat` (all threads, librdkafka's
  included) divided by the callbacks of the phase. The common-rate column runs every target at the
  same offered load ({common}/s, 40% of the slowest target's maximum), {ROUNDS} rounds interleaving
  the targets, median shown: the like-for-like comparison.
- verify: `timbridge-load verify` read the stream/topic back: missing, duplicated and out-of-order
  messages per group across all phases.

Reproduce: `bench/run.sh` (installs nats-server and tansu if missing, builds release binaries,
~4 minutes). Raw results: `bench/out/results.json` (not committed).
"""
    # Hand-written analysis (profile, before/after) lives in docs/benchmarks-notes.md and is
    # appended, so that a rerun refreshes the numbers without losing it.
    notes = ROOT / "docs" / "benchmarks-notes.md"
    if notes.exists():
        text += "\n" + notes.read_text()
    (ROOT / "docs" / "benchmarks.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""CPU per callback at each target's closed-loop maximum, targets interleaved, with the bridge's
CPU split by thread: `python3 bench/saturation.py nats,nats-spooled,nats,nats-spooled`
(release binaries built; BENCH_CONNECTIONS sets the closed loop's connections, D the seconds
of each run). One nats-server with file storage for all runs."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def threads(pid):
    """CPU ticks by thread name (threads that exited are in the process total only)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name = stat.split("(", 1)[1].rsplit(")", 1)[0]
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def main():
    targets = sys.argv[1].split(",") if len(sys.argv) > 1 else ["nats", "nats-spooled"] * 3
    duration = int(os.environ.get("D", "8"))
    work = tempfile.mkdtemp(prefix="timbridge-saturation-")
    port = bench.free_port()
    nats = subprocess.Popen(
        ["/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", f"{work}/js"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.wait_port(port)

    class Brokers:
        nats_url = f"nats://127.0.0.1:{port}"
    bench.OUT.mkdir(parents=True, exist_ok=True)
    print(f"closed loop, {bench.CONNECTIONS} connections, {duration} s")
    for target in targets:
        server = bench.Server(target, Brokers, work)
        bench.load(server, "warmup", duration=2)
        before = threads(server.proc.pid)
        r = bench.load(server, "max", duration=duration)
        after = threads(server.proc.pid)
        per = {k: (after[k] - before.get(k, 0)) / bench.TICK * 1e6 / r["sent"] for k in after}
        split = ", ".join(f"{k} {v:.1f}" for k, v in per.items() if v > 0.2)
        print(f"{target}: {r['ok_per_s']:.0f}/s, {r['cpu_us_per_callback']:.1f} µs/callback ({split}), "
              f"p50 {r['latency_us']['p50'] / 1000:.2f} ms, p99 {r['latency_us']['p99'] / 1000:.2f} ms", flush=True)
        server.stop()
    nats.kill()


if __name__ == "__main__":
    main()

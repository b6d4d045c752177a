#!/usr/bin/env python3
"""CPU per callback at saturation and at a common rate, for every target, with a plot.

    python3 bench/saturation.py [TARGET,TARGET,...]     # after cargo build --release --workspace --bins

Targets (default all): baseline, stdout, nats, kafka, nats-spooled, kafka-spooled. Callbacks
are signed (BENCH_TOKEN; empty for unsigned). One nats-server (file storage) and one tansu
(memory storage) serve every run. Environment: D seconds per phase (8), ROUNDS (2),
BENCH_CONNECTIONS (the closed loop's keep-alive connections, 16).

1. Saturation: each target in turn, ROUNDS times interleaved, closed loop for D s: callbacks/s
   and CPU µs per answered callback (user+system of the server process, /proc/<pid>/stat, all
   threads; a spooled target's time includes forwarding everything it took), split by thread.
2. A common rate (40% of the slowest target's saturation rate) for every target, and each
   target at 50% of its own maximum; each spooled target's direct twin also runs at the
   spooled target's 50% rate, so that their p99s compare at one rate.

Writes bench/out/saturation.json, prints the tables for docs/benchmarks.md and draws
docs/benchmarks-saturation.png: CPU per callback against callbacks/s, a line per target.
"""

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

ALL = ["baseline", "stdout", "nats", "kafka", "nats-spooled", "kafka-spooled"]
PNG = bench.ROOT / "docs" / "benchmarks-saturation.png"


def threads(pid):
    """CPU ticks by thread name (threads that exited are in the process total only)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        name = stat.split("(", 1)[1].rsplit(")", 1)[0]
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def point(result):
    return {
        "rate": result["ok_per_s"],
        "cpu_us": result["cpu_us_per_callback"],
        "p50_ms": result["latency_us"]["p50"] / 1000,
        "p99_ms": result["latency_us"]["p99"] / 1000,
        "non_200": result["sent"] - result["ok"] + result.get("missed", 0),
    }


def saturate(target, brokers, work, duration):
    server = bench.Server(target, brokers, work)
    try:
        bench.load(server, "warmup", duration=2)
        before = threads(server.proc.pid)
        r = bench.load(server, "max", duration=duration)
        after = threads(server.proc.pid)
    finally:
        server.stop()
    p = point(r)
    p["threads_us"] = {k: round((after[k] - before.get(k, 0)) / bench.TICK * 1e6 / max(r["sent"], 1), 1)
                       for k in after if after[k] - before.get(k, 0) > 0}
    return p


def at_rate(target, brokers, work, rate, duration):
    server = bench.Server(target, brokers, work)
    try:
        bench.load(server, "warmup", rate=rate, duration=2)
        return point(bench.load(server, f"rate{round(rate)}", rate=rate, duration=duration))
    finally:
        server.stop()


def median_point(points):
    keys = ("rate", "cpu_us", "p50_ms", "p99_ms")
    out = {k: statistics.median(p[k] for p in points) for k in keys}
    out["non_200"] = sum(p["non_200"] for p in points)
    out["rounds_cpu_us"] = [round(p["cpu_us"], 1) for p in points]
    return out


def setup(default_targets, name):
    """The targets (argv[1], comma-separated), D, ROUNDS, a work directory and the brokers the
    targets need, started."""
    targets = sys.argv[1].split(",") if len(sys.argv) > 1 else default_targets
    duration = int(os.environ.get("D", "8"))
    rounds = int(os.environ.get("ROUNDS", "2"))
    bench.TARGETS = targets
    bench.OUT.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"timbridge-{name}-")
    return targets, duration, rounds, work, bench.Brokers(work)


def main():
    targets, duration, rounds, work, brokers = setup(ALL, "saturation")
    results = {t: {"max": [], "rates": {}} for t in targets}
    try:
        for n in range(rounds):
            for target in targets:
                p = saturate(target, brokers, work, duration)
                results[target]["max"].append(p)
                print(f"round {n + 1} {target}: {p['rate']:.0f}/s, {p['cpu_us']:.1f} µs/callback, "
                      f"p99 {p['p99_ms']:.1f} ms ({p['threads_us']})", flush=True)
        for target in targets:
            results[target]["saturation"] = median_point(results[target]["max"])
        common = round(0.4 * min(results[t]["saturation"]["rate"] for t in targets), -2)
        plan = []
        for target in targets:
            plan.append((target, common))
            plan.append((target, round(0.5 * results[target]["saturation"]["rate"], -2)))
            if target.endswith("-spooled") and target[:-len("-spooled")] in targets:
                plan.append((target[:-len("-spooled")], plan[-1][1]))
        for target, rate in plan:
            p = at_rate(target, brokers, work, rate, duration)
            results[target]["rates"][str(rate)] = p
            print(f"{target} at {rate}/s: {p['cpu_us']:.1f} µs/callback, p50 {p['p50_ms']:.2f} ms, "
                  f"p99 {p['p99_ms']:.2f} ms, non-200 {p['non_200']}", flush=True)
    finally:
        brokers.stop()
    results["_common_rate"] = common
    (bench.OUT / "saturation.json").write_text(json.dumps(results, indent=2))
    report(results, targets, common)
    plot(results, targets)


def report(results, targets, common):
    base = results.get("baseline")
    print(f"\n| target | callbacks/s at saturation | CPU µs/callback at saturation (rounds) | × ceiling | "
          f"CPU µs/callback at {common:.0f}/s | × ceiling | p99 ms at saturation | non-200 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        s = results[t]["saturation"]
        c = results[t]["rates"][str(common)]
        ratio = f"{s['cpu_us'] / base['saturation']['cpu_us']:.2f}" if base else "—"
        ratio_c = f"{c['cpu_us'] / base['rates'][str(common)]['cpu_us']:.2f}" if base else "—"
        rounds = " / ".join(f"{x:.1f}" for x in s["rounds_cpu_us"])
        print(f"| {t} | {s['rate']:,.0f} | {s['cpu_us']:.1f} ({rounds}) | {ratio} | {c['cpu_us']:.1f} | "
              f"{ratio_c} | {s['p99_ms']:.1f} | {s['non_200'] + c['non_200']} |")
    spooled = [t for t in targets if t.endswith("-spooled") and t[:-len("-spooled")] in targets]
    if spooled:
        print("\n| spooled vs direct | rate | CPU µs/callback spooled / direct | × | p99 ms spooled / direct | × |")
        print("|---|---:|---:|---:|---:|---:|")
        for t in spooled:
            direct = t[:-len("-spooled")]
            rate = str(round(0.5 * results[t]["saturation"]["rate"], -2))
            a, b = results[t]["rates"][rate], results[direct]["rates"][rate]
            print(f"| {t} | {float(rate):,.0f}/s (50% of spooled's maximum) | {a['cpu_us']:.1f} / {b['cpu_us']:.1f} | "
                  f"{a['cpu_us'] / b['cpu_us']:.2f} | {a['p99_ms']:.2f} / {b['p99_ms']:.2f} | {a['p99_ms'] / b['p99_ms']:.2f} |")
            s, d = results[t]["saturation"], results[direct]["saturation"]
            print(f"| {t} at saturation | {s['rate']:,.0f} / {d['rate']:,.0f}/s | {s['cpu_us']:.1f} / {d['cpu_us']:.1f} | "
                  f"{s['cpu_us'] / d['cpu_us']:.2f} | — | — |")


def plot(results, targets):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for t in targets:
        points = sorted([(p["rate"], p["cpu_us"]) for p in results[t]["rates"].values()]
                        + [(results[t]["saturation"]["rate"], results[t]["saturation"]["cpu_us"])])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=t)
    ax.set_xlabel("callbacks/s answered (the last point of each line: closed loop, saturation)")
    ax.set_ylabel("server CPU µs per callback")
    ax.set_title("timbridge: CPU per callback against rate, signed callbacks, 2 cores shared")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(PNG)
    print(f"\nplot: {PNG.relative_to(bench.ROOT)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How the bridge's cost grows: CPU per callback at saturation against the number of groups
(10 vs 100,000) and the body size (0.3, 4 and 64 KiB), for each target, rounds interleaved.

    python3 bench/growth.py [TARGET,...]     # default stdout,nats; after cargo build --release --workspace --bins

Each cell is bench/saturation.py's closed loop (signed callbacks, D s, BENCH_CONNECTIONS), the
median of ROUNDS (default 2). The slope is the change from the smaller to the larger setting, in
percent of the smaller. Writes bench/out/growth.json.
"""

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import saturation  # noqa: E402

# (label, groups, body bytes): body 0 is the generator's own 0.3–2 KB (about 600 B).
SETTINGS = [
    ("10 groups", 10, 300),
    ("100,000 groups", 100_000, 300),
    ("0.3 KiB bodies", 200, 300),
    ("4 KiB bodies", 200, 4096),
    ("64 KiB bodies", 200, 65536),
]
SLOPES = [("groups, 10 → 100,000", "10 groups", "100,000 groups"),
          ("body, 0.3 → 4 KiB", "0.3 KiB bodies", "4 KiB bodies"),
          ("body, 0.3 → 64 KiB", "0.3 KiB bodies", "64 KiB bodies")]


def main():
    targets, duration, rounds, work, brokers = saturation.setup(["stdout", "nats"], "growth")
    cells = {}
    try:
        for n in range(rounds):
            for label, groups, body in SETTINGS:
                bench.GROUPS, bench.BODY_BYTES = groups, body
                for target in targets:
                    p = saturation.saturate(target, brokers, work, duration)
                    cells.setdefault((target, label), []).append(p)
                    print(f"round {n + 1} {target} {label}: {p['rate']:.0f}/s, {p['cpu_us']:.1f} µs/callback, "
                          f"non-200 {p['non_200']}", flush=True)
    finally:
        brokers.stop()
    table = {f"{t}|{l}": {"cpu_us": statistics.median(p["cpu_us"] for p in ps),
                          "rate": statistics.median(p["rate"] for p in ps),
                          "rounds_cpu_us": [round(p["cpu_us"], 1) for p in ps]}
             for (t, l), ps in cells.items()}
    (bench.OUT / "growth.json").write_text(json.dumps(table, indent=2))
    print("\n| target | setting | callbacks/s | CPU µs/callback (rounds) |")
    print("|---|---|---:|---:|")
    for target in targets:
        for label, _, _ in SETTINGS:
            c = table[f"{target}|{label}"]
            rounds_text = " / ".join(f"{x:.1f}" for x in c["rounds_cpu_us"])
            print(f"| {target} | {label} | {c['rate']:,.0f} | {c['cpu_us']:.1f} ({rounds_text}) |")
    print("\n| target | slope | CPU per callback |")
    print("|---|---|---:|")
    for target in targets:
        for name, a, b in SLOPES:
            x, y = table[f"{target}|{a}"]["cpu_us"], table[f"{target}|{b}"]["cpu_us"]
            print(f"| {target} | {name} | {100 * (y - x) / x:+.0f}% |")


if __name__ == "__main__":
    main()

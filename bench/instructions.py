#!/usr/bin/env python3
"""Instructions per callback, counted by valgrind's callgrind: the profile-driven pass's
measure. Counts do not move with what else the machine is doing (a shared VM, a build on the
other core), unlike CPU time, so two builds compare to the instruction.

    python3 bench/instructions.py [TARGET ...] [--top N]   # after cargo build --release --workspace --bins

Targets: `baseline` (hyper + serde_json, the ceiling), `stdout` (the bridge, signed callbacks,
stdout to /dev/null), `stdout-unsigned` (`--allow-any-sdkappid`), `nats` (a nats-server of its
own; the bridge's instructions only). Each runs under callgrind, takes a warm-up, has its
counters zeroed, answers CALLBACKS callbacks (default 2000) over 4 keep-alive connections, and
is dumped: the total over the callbacks, and the functions with the most inclusive
instructions (`callgrind_annotate --inclusive=yes`). User-space instructions only: the kernel's
share (syscalls, wake-ups) is in bench/saturation.py's CPU time, not here.
"""

import hashlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

ROOT = bench.ROOT
TOKEN = "bench-token"
BODY = (ROOT / "tests/fixtures/group_text.json").read_bytes()
CALLBACKS = int(os.environ.get("CALLBACKS", "2000"))
CONNECTIONS = 4


def request(seq, group, signed):
    body = BODY.replace(b'"MsgSeq": 123', f'"MsgSeq": {seq}'.encode()).replace(
        b"@TGS#2J4SZEAEL", group.encode())
    query = "SdkAppid=1400000000&CallbackCommand=Group.CallbackAfterSendMsg&contenttype=json"
    if signed:
        now = str(int(time.time()))
        sign = hashlib.sha256((TOKEN + now).encode()).hexdigest()
        query += f"&RequestTime={now}&Sign={sign}"
    return (f"POST /callback?{query} HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def read_answer(conn, pending):
    """Reads one whole answer (headers and Content-Length body) off a keep-alive connection."""
    data = pending
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(rest) < length:
        rest += conn.recv(65536)
    return head.split(b"\r\n", 1)[0].decode(), rest[length:]


def send(port, first, count, group, signed, statuses):
    conn = socket.create_connection(("127.0.0.1", port), timeout=300)
    pending = b""
    for seq in range(first, first + count):
        conn.sendall(request(seq, group, signed))
        status, pending = read_answer(conn, pending)
        statuses.append(status)
    conn.close()


def load(port, start, count, signed):
    statuses, threads = [], []
    for c in range(CONNECTIONS):
        t = threading.Thread(target=send, args=(port, start, count // CONNECTIONS,
                                                f"@TGS#insn{c}", signed, statuses))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    bad = [s for s in statuses if not s.endswith("200 OK")]
    if bad:
        sys.exit(f"not answered 200: {bad[:3]}")
    return len(statuses)


def command(target, port, admin, nats_url):
    if target == "baseline":
        return [str(bench.RELEASE / "timbridge-baseline"), f"127.0.0.1:{port}"], False
    cmd = [str(bench.RELEASE / "timbridge"), "serve", "--listen", f"127.0.0.1:{port}",
           "--admin-listen", f"127.0.0.1:{admin}", "--log-level", "warn"]
    signed = target != "stdout-unsigned"
    cmd += ["--sdkappid", "1400000000", "--token", TOKEN] if signed else ["--allow-any-sdkappid"]
    if target == "nats":
        cmd += ["--sink", "nats", "--nats-url", nats_url]
    return cmd, signed


def measure(target, work, nats_url, top):
    port, admin = bench.free_port(), bench.free_port()
    out = work / f"callgrind.{target}"
    cmd, signed = command(target, port, admin, nats_url)
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                            stdout=subprocess.DEVNULL, stderr=open(work / f"{target}.stderr", "w"))
    try:
        bench.wait_port(port, timeout=120)
        if target != "baseline":
            end = time.time() + 120
            while bench.http_status(f"http://127.0.0.1:{admin}/readyz") != 200:
                if time.time() > end:
                    sys.exit(f"{target}: not ready")
                time.sleep(0.5)
        load(port, 1, 200, signed)
        time.sleep(1)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
        answered = load(port, 1000, CALLBACKS, signed)
        time.sleep(1)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
    finally:
        proc.terminate()
        proc.wait()
    dump = max(work.glob(f"callgrind.{target}.*"), key=lambda p: p.stat().st_mtime)
    total = next(int(line.split()[1]) for line in dump.read_text(errors="replace").splitlines()
                 if line.startswith(("summary:", "totals:")))
    print(f"{target}: {total / answered:,.0f} instructions per callback ({answered} callbacks)", flush=True)
    if top:
        annotate = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(dump)],
                                  capture_output=True, text=True).stdout
        rows = [l for l in annotate.splitlines() if re.match(r"^\s*[\d,]+ \(", l)]
        for line in rows[1:top + 1]:
            count, rest = line.split(" (", 1)
            name = rest.split(")", 1)[1].strip()
            print(f"  {int(count.replace(',', '')) / answered:>10,.0f}  {name[:150]}")
    return total / answered


def main():
    argv = sys.argv[1:]
    top = 0
    if "--top" in argv:
        at = argv.index("--top")
        top = int(argv[at + 1])
        del argv[at:at + 2]
    targets = argv or ["baseline", "stdout", "stdout-unsigned"]
    work = Path(tempfile.mkdtemp(prefix="timbridge-insn-"))
    nats = None
    nats_url = None
    if "nats" in targets:
        port = bench.free_port()
        nats = subprocess.Popen(["/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", str(port), "-js",
                                 "-sd", str(work / "js")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bench.wait_port(port)
        nats_url = f"nats://127.0.0.1:{port}"
    try:
        counts = {t: measure(t, work, nats_url, top) for t in targets}
    finally:
        if nats:
            nats.kill()
    if "baseline" in counts:
        for t, n in counts.items():
            print(f"{t}: {n / counts['baseline']:.2f}x the baseline's instructions")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The walk of one callback, measured: which files of src/ run code, and how many of their
functions, from the accepted connection to the 200 of one `Group.CallbackAfterSendMsg`.

    python3 bench/walk.py [stdout|spooled] [--functions]

Runs a debug build of the bridge (nothing inlined: every function of ours that runs is seen), with a token (the
signature is checked),
under valgrind's callgrind, warms it up with a few callbacks on one keep-alive connection,
zeroes the counters, sends one more callback on a new connection, and dumps. Background
tasks that happen to run in that window (a timer, a gauge) would count too; run it twice
if a number looks odd. Trivial accessors count like any other function, so the function count
is an upper bound of what a reader must open; the file count is exact.
"""

import hashlib
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "walk-token"
BODY = (ROOT / "tests/fixtures/group_text.json").read_bytes()


def post(port, seq, conn=None):
    """One callback; returns the status line. Reuses `conn` (a socket) when given."""
    body = BODY.replace(b'"MsgSeq": 123', f'"MsgSeq": {seq}'.encode())
    now = str(int(time.time()))
    sign = hashlib.sha256((TOKEN + now).encode()).hexdigest()
    query = ("SdkAppid=1400000000&CallbackCommand=Group.CallbackAfterSendMsg&contenttype=json"
             f"&RequestTime={now}&Sign={sign}")
    head = (f"POST /callback?{query} HTTP/1.1\r\nHost: walk\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    own = conn is None
    s = conn or socket.create_connection(("127.0.0.1", port), timeout=120)
    s.sendall(head + body)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    if own:
        s.close()
    return data.split(b"\r\n", 1)[0].decode()


def ran(dump, prefix):
    """Functions that ran in a callgrind dump, by file under `prefix`: those with a cost line
    (their own instructions or a call's) after their `fn=`. Its file is the `fl=` before it
    (names are compressed: `(id) name` the first time, `(id)` after, in `fn=`, `cfn=`, `fl=`
    and the rest). A function named with no cost under it (a frame on a sleeping thread's
    stack) did not run."""
    names = {"fl": {}, "fn": {}}
    functions = defaultdict(set)
    current_file = current_fn = None
    for line in Path(dump).read_text(errors="replace").splitlines():
        m = re.match(r"(c?)(fl|fi|fe|fn)=\((\d+)\)(?: (.*))?$", line)
        if not m:
            if current_fn and line[:1] in "0123456789+-*" and line.strip():
                functions[current_file[len(prefix):]].add(current_fn)
            continue
        kind = "fn" if m.group(2) == "fn" else "fl"
        table = names[kind]
        if m.group(4) is not None:
            table[m.group(3)] = m.group(4)
        name = table.get(m.group(3), "?")
        if m.group(1):
            continue
        if m.group(2) == "fl":
            current_file = name
            current_fn = None
        elif m.group(2) == "fn":
            mine = current_file is not None and current_file.startswith(prefix)
            current_fn = name if mine else None
    return functions


def wait_ready(admin, deadline=120):
    """Polls /readyz (a spool recovers before it takes callbacks)."""
    end = time.time() + deadline
    while bench.http_status(f"http://127.0.0.1:{admin}/readyz") != 200:
        if time.time() > end:
            sys.exit("the bridge did not become ready")
        time.sleep(0.5)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "stdout"
    show_functions = "--functions" in sys.argv
    subprocess.run(["cargo", "build", "--quiet", "--bin", "timbridge"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="timbridge-walk-"))
    out = work / "callgrind.out"
    port, admin = bench.free_port(), bench.free_port()
    args = [str(ROOT / "target/debug/timbridge"), "serve", "--sdkappid", "1400000000", "--token", TOKEN,
            "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
            "--log-level", "warn"]
    if mode == "spooled":
        args += ["--spool-dir", str(work / "spool")]
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *args],
        stdout=subprocess.DEVNULL, stderr=open(work / "stderr", "w"))
    try:
        bench.wait_port(port, timeout=120)
        wait_ready(admin)
        warm = socket.create_connection(("127.0.0.1", port), timeout=120)
        for seq in range(1, 6):
            assert post(port, seq, warm).endswith("200 OK"), "warm-up not answered 200"
        warm.close()
        # Under valgrind the warm-up connection's teardown takes a while: let it finish
        # before zeroing, or its last functions count as the measured callback's.
        time.sleep(1)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        status = post(port, 6)
        # The answer is in; the connection's own teardown (its task ending, the gauge and
        # the slot released) is part of the walk: let it run before the dump.
        time.sleep(0.5)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        assert status.endswith("200 OK"), status
    finally:
        proc.terminate()
        proc.wait()
    dumps = sorted(work.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    functions = ran(dumps[0], str(ROOT / "src") + "/")
    total = sum(len(f) for f in functions.values())
    print(f"{mode}: {len(functions)} files, {total} functions of src/ for one callback")
    for path in sorted(functions):
        print(f"  {path:40} {len(functions[path])}")
        if show_functions:
            for f in sorted(functions[path]):
                print(f"      {f}")


if __name__ == "__main__":
    main()

"""Fixtures of the deployment tests: a running bridge serving callbacks and a real Prometheus
scraping it, each on ephemeral loopback ports, killed at the end of the session."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import helmrender  # noqa: E402

REPO = helmrender.REPO
FIXTURES = REPO / "tests" / "fixtures"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
SCRAPE_JOB = "timbridge"
AUDIT_JOB = "timbridge-audit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError) as e:
            last_error = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Process:
    """A child process killed at teardown (its stderr kept in a file for failure messages)."""

    def __init__(self, args: list[str], name: str, **kw: Any) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def bridge_binary() -> Path:
    explicit = os.environ.get("TIMBRIDGE_BIN")
    if explicit:
        return Path(explicit)
    binary = REPO / "target" / "debug" / "timbridge"
    if not binary.exists():
        # `cargo test` (scripts/test-all.sh) builds it already; this covers a lone run.
        subprocess.run(["cargo", "build", "--locked", "--bin", "timbridge"], cwd=REPO, check=True)
    return binary


class Bridge:
    def __init__(self) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.process = Process(
            [str(bridge_binary()), "serve", "--allow-any-sdkappid",
             "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}"],
            "timbridge",
            # The process must not pick up TIMBRIDGE_* settings of the developer's shell.
            env={k: v for k, v in os.environ.items() if not k.startswith("TIMBRIDGE_")},
        )
        wait_for("the bridge's /readyz", lambda: http("GET", self.admin_url("/readyz"))[0] == 200)

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def send_traffic(self) -> dict[int, int]:
        """Every fixture once (200s) plus a few bad requests (so rejection series move)."""
        statuses: dict[int, int] = {}

        def post(command: str, body: bytes, path: str = "/callback") -> None:
            query = urllib.parse.urlencode({"SdkAppid": "1400000000", "CallbackCommand": command,
                                            "contenttype": "json", "ClientIP": "127.0.0.1",
                                            "OptPlatform": "RESTAPI"})
            status, _ = http("POST", f"http://127.0.0.1:{self.port}{path}?{query}", body)
            statuses[status] = statuses.get(status, 0) + 1

        for fixture in sorted(FIXTURES.glob("*.json")):
            body = fixture.read_bytes()
            post(json.loads(body)["CallbackCommand"], body)
        post("Group.CallbackAfterSendMsg", b"not json")
        post("Group.CallbackAfterSendMsg", b'{"CallbackCommand":"Group.CallbackAfterSendMsg"}')
        post("Group.CallbackAfterSendMsg", b"{}", path="/nope")
        return statuses


@pytest.fixture(scope="session")
def bridge():
    b = Bridge()
    yield b
    b.process.stop()


class Auditor:
    """`timbridge audit` serving its metrics: its broker is not reachable, so it waits for the
    stream and looks nothing up, but every series it exports exists."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="timbridge-audit-"))
        config = self.dir / "apps.yaml"
        config.write_text("apps:\n  - sdkappid: 1400000000\n    unsigned: true\n    rest:\n"
                          "      region: singapore\n      identifier: administrator\n"
                          "      secret_key: not-a-real-key\n")
        self.admin_port = free_port()
        self.process = Process(
            [str(bridge_binary()), "audit", "--config", str(config),
             "--admin-listen", f"127.0.0.1:{self.admin_port}",
             "--nats-url", f"nats://127.0.0.1:{free_port()}"],
            "timbridge-audit",
            env={k: v for k, v in os.environ.items() if not k.startswith("TIMBRIDGE_")},
        )
        wait_for("the auditor's /healthz",
                 lambda: http("GET", f"http://127.0.0.1:{self.admin_port}/healthz")[0] == 200)


@pytest.fixture(scope="session")
def auditor():
    a = Auditor()
    yield a
    a.process.stop()
    shutil.rmtree(a.dir, ignore_errors=True)


class Prometheus:
    def __init__(self, targets: dict[str, str], rule_file: Path) -> None:
        """`targets`: scrape job name → host:port."""
        self.dir = Path(tempfile.mkdtemp(prefix="timbridge-prom-"))
        shutil.copyfile(rule_file, self.dir / "alerts.yaml")
        jobs = "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
                       for job, target in targets.items())
        (self.dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files: [alerts.yaml]\n"
            f"scrape_configs:\n{jobs}"
        )
        self.port = free_port()
        self.process = Process(
            ["prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            "prometheus",
        )
        wait_for("Prometheus to be ready",
                 lambda: http("GET", f"http://127.0.0.1:{self.port}/-/ready")[0] == 200)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, body = http("GET", url)
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", f"{params}: {payload}"
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def prometheus(bridge, auditor):
    """A Prometheus that has scraped the bridge several times while it served callbacks (and
    the auditor, as a job of its own as in the chart)."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: run scripts/install-deploy-test-deps.sh")
    prom = Prometheus({SCRAPE_JOB: f"127.0.0.1:{bridge.admin_port}",
                       AUDIT_JOB: f"127.0.0.1:{auditor.admin_port}"}, ALERTS)

    def scrapes() -> float:
        result = prom.query(f'count_over_time(timbridge_build_info{{job="{SCRAPE_JOB}"}}[1m])')
        return float(result[0]["value"][1]) if result else 0.0

    # rate() needs two samples in its window, and traffic between them to be non-zero:
    # send a batch, let two scrapes pass, send another, let two more pass.
    for _ in range(2):
        assert bridge.send_traffic().get(200, 0) > 0
        seen = scrapes()
        wait_for("two more scrapes", lambda: scrapes() >= seen + 2, timeout=30)
    yield prom
    prom.stop()

"""The dashboard's queries and the alerts, checked by promtool and evaluated by a real
Prometheus (Debian's package) scraping a running bridge that serves callbacks."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import ALERTS, AUDIT_JOB, REPO, SCRAPE_JOB, wait_for

DASHBOARD = REPO / "deploy" / "grafana" / "timbridge.json"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yaml"

# Grafana fills these in; the test uses what a user picking "All" over this one job gets, and
# a rate window that covers several 1 s scrapes.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$namespace": ".*",
    "$job": SCRAPE_JOB,
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables filled in) of every panel target."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unknown variable in {panel['title']}: {expr}"
            out.append((f"{panel['title']} [{target['refId']}]", expr))
    return out


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# A comparison with a number at the end of an operand: "> 0.05", "== 0", "> bool 1".
THRESHOLD = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*(bool\s+)?-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def signal(expr: str) -> str:
    """The alert's expression without its thresholds: the values it compares.

    A healthy bridge must not fire the alerts, so their full expressions are (rightly) empty
    here; what must return data is what they look at. Removing the comparisons keeps the
    selectors, aggregations and "and"/"or" of the rule, so a misspelt metric or label still
    comes back empty. absent(X) is checked as X.
    """
    expr = " ".join(expr.split())
    absent = re.fullmatch(r"absent\((.*)\)", expr)
    if absent:
        return absent.group(1)
    return THRESHOLD.sub("", expr)


# --- promtool ---------------------------------------------------------------------------------

def promtool(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_the_alerts():
    out = promtool("check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_promtool_checks_the_dashboard_queries():
    # promtool has no "check query"; a rule file with one recording rule per query makes
    # promtool parse each of them with Prometheus' own parser.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(dashboard_queries())]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        out = promtool("check", "rules", f.name)
    assert f"SUCCESS: {len(dashboard_queries())} rules found" in out


def test_promtool_unit_tests_cover_each_alert_firing_and_not_firing():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired, quiet = set(), set()
    for test in tests:
        for t in test.get("promql_expr_test", []):
            name = re.search(r'alertname="(\w+)", alertstate="firing"', t["expr"])
            if name and t["exp_samples"]:
                fired.add(name.group(1))
        for t in test.get("alert_rule_test", []):
            if not t["exp_alerts"]:
                quiet.add(t["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"
    out = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert "SUCCESS" in out


def test_signal_strips_only_thresholds():
    assert signal("sum(rate(x[5m])) > 0.05 and sum(y) > 0.1") == "sum(rate(x[5m])) and sum(y)"
    assert signal("a == 0") == "a" and signal("absent(up)") == "up"
    assert signal('histogram_quantile(0.99, sum by (le) (rate(b[5m]))) > 1') == \
        'histogram_quantile(0.99, sum by (le) (rate(b[5m])))'


# --- a real Prometheus ------------------------------------------------------------------------

def test_bridge_metrics_are_scraped(prometheus):
    (up,) = prometheus.query(f'up{{job="{SCRAPE_JOB}"}}')
    assert up["value"][1] == "1"
    ok = prometheus.query(f'sum(timbridge_callbacks_total{{job="{SCRAPE_JOB}", outcome="ok"}})')
    assert float(ok[0]["value"][1]) > 0
    rejected = prometheus.query(f'sum(timbridge_rejections_total{{job="{SCRAPE_JOB}"}})')
    assert float(rejected[0]["value"][1]) > 0


def test_auditor_metrics_are_scraped(prometheus):
    (up,) = prometheus.query(f'up{{job="{AUDIT_JOB}"}}')
    assert up["value"][1] == "1"
    outcomes = prometheus.query(f'timbridge_audit_gap_seqs_total{{job="{AUDIT_JOB}"}}')
    assert {s["metric"]["outcome"] for s in outcomes} == {"found", "backfilled", "settled", "unrecoverable"}


@pytest.mark.parametrize("title,expr", dashboard_queries(), ids=[t for t, _ in dashboard_queries()])
def test_dashboard_query_returns_data(prometheus, title, expr):
    assert prometheus.query(expr), f"{title}: no data for {expr}"


@pytest.mark.parametrize("rule", alert_rules(), ids=[r["alert"] for r in alert_rules()])
def test_alert_expression_evaluates_and_its_signal_returns_data(prometheus, rule):
    prometheus.query(rule["expr"])  # evaluates without error (empty or not)
    assert prometheus.query(signal(rule["expr"])), f"{rule['alert']}: no data for {signal(rule['expr'])}"


def test_prometheus_loads_and_evaluates_every_rule(prometheus):
    def evaluated():
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        done = [r for r in rules if r.get("lastEvaluation", "").startswith("0001") is False
                and r.get("evaluationTime", 0) > 0]
        return rules if len(done) == len(rules) else None

    rules = wait_for("one evaluation of every rule", evaluated, timeout=30)
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_healthy_bridge_fires_no_critical_alert(prometheus):
    for rule in alert_rules():
        if rule["labels"]["severity"] == "critical":
            assert prometheus.query(rule["expr"]) == [], f"{rule['alert']} fires on a healthy bridge"


def test_dashboard_datasource_is_a_variable():
    dash = dashboard()
    (ds_var,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert ds_var["name"] == "datasource" and ds_var["query"] == "prometheus"

    def datasources(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"]
            for value in node.values():
                yield from datasources(value)
        elif isinstance(node, list):
            for value in node:
                yield from datasources(value)

    uids = {ds.get("uid") for ds in datasources(dash)}
    assert uids == {"${datasource}"}, f"hard-coded data source: {uids}"
    titles = " ".join(p["title"] for p in dash["panels"])
    for needed in ("Callbacks/s by command and outcome", "Rejections/s by reason", "p50 / p99",
                   "Publish latency", "In flight", "Sink readiness", "Broker queue depth",
                   "Ordered records released/s by kind", "Markers/s by reason",
                   "Held behind holes", "Oldest hole", "Ordered release latency p50 / p99"):
        assert needed in titles

"""The Helm chart, rendered by Helm's own engine (helm-python-sdk binds Helm v4's Go SDK), for
the default values and every scenario under helm/timbridge/ci/; every manifest validated
against the Kubernetes 1.30 schemas (kubernetes-validate, offline, strict: unknown fields fail).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

import helmrender
from conftest import Process, bridge_binary, free_port, http, wait_for
from helmrender import CHART, REPO, SCENARIOS

K8S_VERSION = "1.30.0"
CASES = [None, *SCENARIOS]
CASE_IDS = ["defaults", *(p.stem for p in SCENARIOS)]


def render_objects(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    return helmrender.objects(helmrender.render(values))


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def is_auditor(obj: dict[str, Any]) -> bool:
    return obj["metadata"]["labels"].get("app.kubernetes.io/component") == "auditor"


def bridge_services(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bridge's two Services: the callback port's, and the admin port's ("-admin")."""
    services = [o for o in by_kind(objs, "Service") if not is_auditor(o)]
    (admin,) = [s for s in services if s["metadata"]["name"].endswith("-admin")]
    (callback,) = [s for s in services if s is not admin]
    return callback, admin


def workload(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The bridge's pods' owner: a Deployment, or a StatefulSet in spooled mode on PVCs."""
    found = [o for o in by_kind(objs, "Deployment") + by_kind(objs, "StatefulSet") if not is_auditor(o)]
    assert len(found) == 1, f"expected one Deployment or StatefulSet, got {len(found)}"
    return found[0]


def bridge_config(objs: list[dict[str, Any]]) -> dict[str, str]:
    """The ConfigMap of the bridge's settings (the other one carries the dashboard)."""
    (cm,) = [o for o in by_kind(objs, "ConfigMap") if "TIMBRIDGE_SINK" in o.get("data", {})]
    return cm["data"]


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def case(request):
    values = helmrender.load_values(request.param)
    return values, render_objects(values)


def test_scenarios_exist():
    assert {p.stem for p in SCENARIOS} >= {
        "kafka-values", "nats-values", "ingress-values", "autoscaling-values",
        "existing-secret-values", "apps-values", "spool-values"}


# --- Kubernetes schemas --------------------------------------------------------------------

def validate_crd_object(obj: dict[str, Any]) -> None:
    """ServiceMonitor and PrometheusRule are CRDs that kubernetes-validate has no schema for:
    check the fields the Prometheus Operator requires, by hand."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"]
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"]
        for ep in spec["endpoints"]:
            assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    elif obj["kind"] == "PrometheusRule":
        assert spec["groups"], "no rule group"
        for group in spec["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                assert rule["expr"] and ("alert" in rule) != ("record" in rule)
    else:
        raise AssertionError(f"unexpected CRD kind {obj['kind']}")


def test_manifests_match_kubernetes_schemas(case):
    _, objs = case
    assert objs
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_crd_object(obj)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_validator_catches_mistakes():
    # A guard against a validator that accepts anything.
    objs = render_objects(None)
    deployment = copy.deepcopy(workload(objs))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(workload(objs))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# --- What every rendering must carry -------------------------------------------------------

def test_deployment_runs_hardened_with_probes(case):
    values, objs = case
    deployment = workload(objs)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "serve"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["automountServiceAccountToken"] is False
    assert "lifecycle" not in container, "no preStop hook: --shutdown-delay does its job"


def test_grace_period_follows_the_shutdown_flags(case):
    values, objs = case
    merged = helm.Chart.load(str(CHART)).merge_values(values)
    shutdown = merged["shutdown"]
    # Spooled mode adds the forwarder's drain to the budget.
    timeout = shutdown["timeoutSeconds"] + (merged["spool"]["drainSeconds"] if merged["spool"]["enabled"] else 0)
    config = bridge_config(objs)
    pod = workload(objs)["spec"]["template"]["spec"]
    assert config["TIMBRIDGE_SHUTDOWN_DELAY"] == f"{shutdown['delaySeconds']}s"
    assert config["TIMBRIDGE_SHUTDOWN_TIMEOUT"] == f"{timeout}s"
    assert pod["terminationGracePeriodSeconds"] == timeout + shutdown["killMarginSeconds"]
    assert pod["terminationGracePeriodSeconds"] > timeout > shutdown["delaySeconds"]


def test_config_names_only_real_flags(case):
    """Every TIMBRIDGE_* variable the chart sets is one `timbridge serve --help` lists."""
    _, objs = case
    help_text = subprocess.run([str(bridge_binary()), "serve", "--help"], check=True,
                               capture_output=True, text=True).stdout
    known = set(re.findall(r"\[env: (TIMBRIDGE_[A-Z_]+)", help_text))
    assert len(known) > 40
    names = set(bridge_config(objs))
    container = workload(objs)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"] for e in container.get("env", [])}
    names |= {n for n in env if n.startswith("TIMBRIDGE_")}
    assert names - known == set()
    # The other variables are the apps' credentials, each named by the --config file.
    assert env - names == set(app_credential_variables(objs))


def test_service_exposes_callback_and_metrics(case):
    _, objs = case
    callback, admin = bridge_services(objs)
    assert [(p["name"], p["targetPort"]) for p in callback["spec"]["ports"]] == [("http", "http")]
    assert [(p["name"], p["targetPort"]) for p in admin["spec"]["ports"]] == [("metrics", "admin")]
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["selector"] == callback["spec"]["selector"]


def test_the_admin_port_is_never_exposed_by_a_load_balancer():
    objs = render_objects({"service": {"type": "LoadBalancer"}})
    callback, admin = bridge_services(objs)
    assert callback["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in callback["spec"]["ports"]] == ["http"]
    assert admin["spec"]["type"] == "ClusterIP"


def test_secret_or_existing_secret(case):
    values, objs = case
    existing = ((values or {}).get("secret") or {}).get("existingSecret")
    container = workload(objs)["spec"]["template"]["spec"]["containers"][0]
    apps = set(app_credential_variables(objs))
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
            if "valueFrom" in e and e["name"] not in apps}
    if existing:
        assert by_kind(objs, "Secret") == []
        assert refs == {existing}
    else:
        assert refs == {one(objs, "Secret")["metadata"]["name"]}
    config = bridge_config(objs)
    assert not any(k in config for k in ("TIMBRIDGE_TOKEN", "TIMBRIDGE_NATS_PASSWORD",
                                          "TIMBRIDGE_KAFKA_SASL_PASSWORD"))


def apps_file(objs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The bridge's --config file, when the values list apps."""
    found = [o for o in by_kind(objs, "ConfigMap") if "apps.yaml" in o.get("data", {})]
    return yaml.safe_load(found[0]["data"]["apps.yaml"]) if found else None


def app_credential_variables(objs: list[dict[str, Any]]) -> list[str]:
    """The environment variables the --config file reads credentials from."""
    names = []
    for app in (apps_file(objs) or {"apps": []})["apps"]:
        names.append(app["token_env"])
        if "rest" in app:
            names.append(app["rest"]["secret_key_env"])
    return names


def test_apps_scenario_renders_both_apps_with_secrets_from_their_secrets():
    values = helmrender.load_values(CHART / "ci" / "apps-values.yaml")
    objs = render_objects(values)
    assert apps_file(objs) == {"apps": [
        {"sdkappid": 1400000001, "token_env": "TIM_APP_1400000001_TOKEN",
         "rest": {"region": "singapore", "identifier": "administrator",
                  "secret_key_env": "TIM_APP_1400000001_REST_SECRET_KEY"}},
        {"sdkappid": 1400000002, "token_env": "TIM_APP_1400000002_TOKEN",
         "nats_subject": "staging.{command}.{partition}"},
    ]}
    config = bridge_config(objs)
    assert config["TIMBRIDGE_CONFIG"] == "/etc/timbridge/config/apps.yaml"
    assert "TIMBRIDGE_SDKAPPID" not in config
    pod = workload(objs)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["TIM_APP_1400000001_TOKEN"] == {"name": "tim-production", "key": "callback-token"}
    assert refs["TIM_APP_1400000001_REST_SECRET_KEY"] == {"name": "tim-production", "key": "secret-key"}
    assert refs["TIM_APP_1400000002_TOKEN"] == {"name": "tim-staging", "key": "token"}
    assert "TIMBRIDGE_TOKEN" not in refs, "one token per app, not one for all"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "apps"]
    assert mount["mountPath"] == "/etc/timbridge/config"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "apps"]
    apps_map = [o for o in by_kind(objs, "ConfigMap") if "apps.yaml" in o.get("data", {})][0]
    assert volume["configMap"]["name"] == apps_map["metadata"]["name"]
    assert "checksum/apps" in workload(objs)["spec"]["template"]["metadata"]["annotations"]
    notes = next(v for k, v in helmrender.render(values).items() if k.endswith("NOTES.txt"))
    assert "1400000002: token from Secret tim-staging" in notes
    assert "bridge.sdkappids is empty" not in notes and "NONE" not in notes


def test_the_bridge_accepts_the_pod_environment_the_apps_scenario_renders(tmp_path):
    """The rendered ConfigMap and --config file, with the Secrets' values in their variables,
    as the pod gets them: the real binary starts with them (and refuses a missing token)."""
    objs = render_objects(helmrender.load_values(CHART / "ci" / "apps-values.yaml"))
    config_file = tmp_path / "apps.yaml"
    apps_map = [o for o in by_kind(objs, "ConfigMap") if "apps.yaml" in o.get("data", {})][0]
    config_file.write_text(apps_map["data"]["apps.yaml"])
    admin = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMBRIDGE_")}
    env.update(bridge_config(objs))
    env.update({"TIMBRIDGE_CONFIG": str(config_file), "TIMBRIDGE_LISTEN": "127.0.0.1:0",
                "TIMBRIDGE_ADMIN_LISTEN": f"127.0.0.1:{admin}"})
    credentials = {name: f"value-of-{name}" for name in app_credential_variables(objs)}
    proc = Process([str(bridge_binary()), "serve"], "timbridge-apps", env={**env, **credentials})
    try:
        wait_for("the bridge's /healthz",
                 lambda: not proc.alive() or http("GET", f"http://127.0.0.1:{admin}/healthz")[0] == 200)
        assert proc.alive(), proc.output()
    finally:
        proc.stop()
    missing = subprocess.run([str(bridge_binary()), "serve"], env=env, capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 64
    assert "apps[0].token_env: TIM_APP_1400000001_TOKEN" in missing.stderr


def test_spool_scenario_is_a_statefulset_with_a_volume_per_pod():
    values = helmrender.load_values(CHART / "ci" / "spool-values.yaml")
    objs = render_objects(values)
    assert by_kind(objs, "Deployment") == []
    sts = one(objs, "StatefulSet")
    assert sts["spec"]["serviceName"] == bridge_services(objs)[0]["metadata"]["name"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    pod = sts["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "spool"]
    config = bridge_config(objs)
    assert config["TIMBRIDGE_SPOOL_DIR"] == mount["mountPath"]
    assert config["TIMBRIDGE_SPOOL_MAX_BYTES"] == "16GiB"
    # The forwarder's drain is added to the shutdown budget, and the grace period follows.
    assert config["TIMBRIDGE_SHUTDOWN_TIMEOUT"] == "70s"
    assert pod["terminationGracePeriodSeconds"] == 25 + 45 + 5
    # The pod's volume survives; no emptyDir for the spool.
    assert "spool" not in {v["name"] for v in pod.get("volumes", [])}


def test_spool_on_emptydir_stays_a_deployment():
    objs = render_objects({"spool": {"enabled": True, "persistence": "emptyDir", "size": "2Gi"}})
    assert by_kind(objs, "StatefulSet") == []
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "spool"]
    assert volume["emptyDir"] == {"sizeLimit": "2Gi"}
    assert bridge_config(objs)["TIMBRIDGE_SPOOL_DIR"] == "/var/lib/timbridge/spool"


def test_spool_on_pvcs_refuses_autoscaling():
    with pytest.raises(helm.HelmError, match="autoscaling with spool"):
        helmrender.render({"spool": {"enabled": True}, "autoscaling": {"enabled": True}})


def test_pdb_on_by_default_with_two_replicas():
    objs = render_objects(None)
    assert workload(objs)["spec"]["replicas"] == 2
    assert one(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert by_kind(objs, "HorizontalPodAutoscaler") == []
    assert by_kind(objs, "Ingress") == []
    # The NetworkPolicy is on by default: the bridge's pods, callback and admin ports only.
    (policy,) = by_kind(objs, "NetworkPolicy")
    assert sorted(r["ports"][0]["port"] for r in policy["spec"]["ingress"]) == ["admin", "http"]


def test_autoscaling_scenario():
    objs = render_objects(helmrender.load_values(CHART / "ci" / "autoscaling-values.yaml"))
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert "replicas" not in workload(objs)["spec"]
    assert one(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"


def test_kafka_scenario():
    values = helmrender.load_values(CHART / "ci" / "kafka-values.yaml")
    rendered = helmrender.render(values)
    objs = helmrender.objects(rendered)
    config = bridge_config(objs)
    assert config["TIMBRIDGE_SINK"] == "kafka"
    assert config["TIMBRIDGE_KAFKA_BROKERS"] == "kafka-0.kafka:9093,kafka-1.kafka:9093,kafka-2.kafka:9093"
    assert config["TIMBRIDGE_KAFKA_SSL_CA"] == "/etc/timbridge/kafka-tls/ca.crt"
    assert config["TIMBRIDGE_SDKAPPID"] == "1400000000,1400000001"
    assert not any(k.startswith("TIMBRIDGE_NATS") for k in config)
    container = workload(objs)["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve", "--kafka-option", "client.id=timbridge",
                                 "--kafka-option", "socket.keepalive.enable=true"]
    assert one(objs, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert one(objs, "PrometheusRule")


def test_nats_scenario():
    objs = render_objects(helmrender.load_values(CHART / "ci" / "nats-values.yaml"))
    config = bridge_config(objs)
    assert config["TIMBRIDGE_NATS_CREDS"] == "/etc/timbridge/secret/nats.creds"
    assert config["TIMBRIDGE_NATS_TLS_CERT"] == "/etc/timbridge/nats-tls/tls.crt"
    assert config["TIMBRIDGE_NATS_TLS_REQUIRED"] == "true"
    assert "nats.creds" in one(objs, "Secret")["data"]
    policy = one(objs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    pod = workload(objs)["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"secret", "nats-tls"}
    assert pod["terminationGracePeriodSeconds"] == 45


def test_ingress_scenario_and_notes_give_the_callback_url():
    values = helmrender.load_values(CHART / "ci" / "ingress-values.yaml")
    rendered = helmrender.render(values)
    ingress = one(helmrender.objects(rendered), "Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "im-callback.example.com"
    assert [p["path"] for p in rule["http"]["paths"]] == ["/tim/callback"]
    notes = next(v for k, v in rendered.items() if k.endswith("NOTES.txt"))
    assert "https://im-callback.example.com/tim/callback" in notes
    assert "Callback authentication: the token is read from Secret" in notes


def test_notes_warn_without_sdkappid_or_token():
    notes = next(v for k, v in helmrender.render(None).items() if k.endswith("NOTES.txt"))
    assert "bridge.sdkappids is empty" in notes and "NONE" in notes


def test_monitoring_objects_only_when_enabled():
    # Offline rendering has no CRDs in its capabilities: autoDetect alone renders nothing.
    objs = render_objects(None)
    assert by_kind(objs, "ServiceMonitor") == [] and by_kind(objs, "PrometheusRule") == []


# --- Files carried by the chart --------------------------------------------------------------

def test_dashboard_configmap_carries_the_dashboard_file():
    objs = render_objects(None)
    (cm,) = [o for o in by_kind(objs, "ConfigMap") if "timbridge.json" in o.get("data", {})]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    file_text = (REPO / "deploy" / "grafana" / "timbridge.json").read_text()
    assert cm["data"]["timbridge.json"].strip() == file_text.strip()
    assert json.loads(cm["data"]["timbridge.json"]) == json.loads(file_text)


def test_prometheusrule_carries_the_alerts_file():
    objs = render_objects({"metrics": {"prometheusRule": {"enabled": True}}})
    rule = one(objs, "PrometheusRule")
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yaml").read_text())
    assert rule["spec"] == alerts


def test_deploy_copies_equal_the_chart_files():
    for src, dst in helmrender.COPIES.items():
        assert dst.read_bytes() == src.read_bytes(), f"{dst} differs: run scripts/render-manifests.sh"


def test_plain_manifests_do_not_drift():
    expected = helmrender.plain_manifests()
    actual = helmrender.PLAIN_MANIFESTS.read_text()
    assert actual == expected, "deploy/kubernetes/timbridge.yaml is stale: run scripts/render-manifests.sh"


def test_plain_manifests_are_valid():
    for obj in yaml.safe_load_all(helmrender.PLAIN_MANIFESTS.read_text()):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- values.schema.json ------------------------------------------------------------------------

def test_every_values_key_is_commented():
    """Every option in values.yaml has a comment line above it. Keys inside a default value
    (the block under a "# --" comment, e.g. resources:) are data, not options."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, inside a default value)
    previous = ""
    block_start = ""  # first line of the comment block just above
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            if stripped.startswith("#") and not previous.startswith("#"):
                block_start = stripped
            previous = stripped or previous
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        in_data = any(data for _, data in stack)
        header = stripped.endswith(":")
        if not in_data and not stripped.startswith("-"):
            assert previous.startswith("#") or header, f"values.yaml:{number} has no comment: {line}"
        stack.append((indent, in_data or (header and previous.startswith("#")
                                           and block_start.startswith("# --"))))
        previous = stripped


BAD_VALUES = [
    {"bridge": {"sink": "rabbitmq"}},
    {"bridge": {"publishTimeout": "1.5 seconds"}},
    {"bridge": {"maxInflight": 0}},
    {"bridge": {"logFormat": "xml"}},
    {"bridge": {"sdkappids": ["14000abc"]}},
    {"bridge": {"path": "callback"}},
    {"bridge": {"maxBodyBytes": "256kb"}},
    {"replicaCount": "two"},
    {"replicaCount": -1},
    {"image": {"pullPolicy": "Sometimes"}},
    {"kafka": {"compression": "brotli"}},
    {"kafka": {"brokers": ["kafka"]}},
    {"kafka": {"securityProtocol": "SASL_SSL_PLAIN"}},
    {"nats": {"streamReplicas": 7}},
    {"shutdown": {"timeoutSeconds": "25s"}},
    {"service": {"port": 70000}},
    {"autoscaling": {"targetCPUUtilizationPercentage": 150}},
    {"ingress": {"enabled": "yes"}},
    {"metrics": {"serviceMonitor": {"interval": "often"}}},
    {"unknownTopLevelKey": True},
    {"bridge": {"maxInfligt": 10}},
    # An app without a token source, or with one that names no key.
    {"apps": [{"sdkappid": 1400000001}]},
    {"apps": [{"sdkappid": 1400000001, "tokenSecret": {"name": "tim"}}]},
    {"apps": [{"sdkappid": 1400000001, "token": "inline"}]},
    {"apps": [{"sdkappid": "14000abc", "tokenSecret": {"name": "tim", "key": "token"}}]},
    {"apps": [{"sdkappid": 1, "tokenSecret": {"name": "t", "key": "k"},
               "rest": {"region": "mars", "identifier": "admin",
                        "secretKeySecret": {"name": "t", "key": "s"}}}]},
    # The ordered stream: a subject without {partition}, a stream name NATS refuses, a size
    # the auditor's parser does not know, a switch that is not a boolean.
    {"audit": {"ordered": {"subject": "tim-ordered"}}},
    {"audit": {"ordered": {"stream": "TIM.ORDERED"}}},
    {"audit": {"ordered": {"maxHeldBytes": "64mb"}}},
    {"audit": {"ordered": {"enabled": "yes"}}},
    {"audit": {"ordered": {"topik": "tim-ordered"}}},
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=[json.dumps(b) for b in BAD_VALUES])
def test_schema_rejects_bad_values(bad):
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError):
            chart.validate_schema(chart.merge_values(bad))
        # And rendering (what `helm install`/`helm template` do) refuses them too.
        with pytest.raises(helm.HelmError):
            chart.render(bad, name="timbridge", namespace="timbridge", is_install=True)


@pytest.mark.parametrize("path", CASES, ids=CASE_IDS)
def test_schema_accepts_defaults_and_scenarios(path):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.merge_values(helmrender.load_values(path)))


APP = {"sdkappid": 1400000001, "tokenSecret": {"name": "tim", "key": "token"}}


@pytest.mark.parametrize("values,message", [
    ({"apps": [APP], "bridge": {"sdkappids": ["1400000000"]}}, "apps replaces"),
    ({"apps": [APP], "secret": {"token": "t"}}, "apps replaces"),
    ({"apps": [APP, APP]}, "listed twice"),
    ({"apps": [{**APP, "kafkaTopic": "t"}]}, "sets kafkaTopic, but bridge.sink is nats"),
    ({"apps": [{**APP, "natsSubject": "s"}], "bridge": {"sink": "kafka"}}, "sets natsSubject"),
], ids=["sdkappids", "token", "twice", "kafka-topic-on-nats", "nats-subject-on-kafka"])
def test_template_refuses_inconsistent_apps(values, message):
    with pytest.raises(helm.HelmError, match=message):
        helmrender.render(values)


@pytest.mark.parametrize("values,message", [
    ({"bridge": {"sdkappids": ["1400000000"]}}, "bridge.sdkappids needs the callback token"),
    ({"bridge": {"sdkappids": ["1400000000"], "allowUnsigned": True}, "secret": {"token": "t"}},
     "remove it or secret.token"),
    ({"apps": [APP], "bridge": {"allowUnsigned": True}}, "apps replaces"),
], ids=["no-token", "unsigned-with-token", "unsigned-with-apps"])
def test_template_refuses_apps_without_a_token(values, message):
    with pytest.raises(helm.HelmError, match=message):
        helmrender.render(values)


def test_the_token_is_required_unless_the_apps_are_served_unsigned():
    def token_env(values):
        env = {e["name"]: e for e in
               workload(render_objects(values))["spec"]["template"]["spec"]["containers"][0]["env"]}
        return env.get("TIMBRIDGE_TOKEN"), bridge_config(render_objects(values))

    ref, config = token_env({"bridge": {"sdkappids": ["1400000000"]}, "secret": {"token": "t"}})
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "timbridge", "key": "token"}
    assert "TIMBRIDGE_ALLOW_UNSIGNED" not in config
    ref, _ = token_env({"bridge": {"sdkappids": ["1400000000"]},
                        "secret": {"existingSecret": "mine"}})
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "token"}
    ref, config = token_env({"bridge": {"sdkappids": ["1400000000"], "allowUnsigned": True}})
    assert ref is None and config["TIMBRIDGE_ALLOW_UNSIGNED"] == "true"
    # --allow-source from bridge.allowSources.
    _, config = token_env({"bridge": {"sdkappids": ["1400000000"],
                                      "allowSources": ["10.0.0.0/8", "203.0.113.7"]},
                           "secret": {"token": "t"}})
    assert config["TIMBRIDGE_ALLOW_SOURCE"] == "10.0.0.0/8,203.0.113.7"
    # TLS from bridge.tls: the Secrets mounted as directories (renewals appear in place).
    values = {"bridge": {"sdkappids": ["1400000000"], "trustedProxies": ["10.0.0.0/8"],
                         "tls": {"secretName": "callback-tls", "clientCASecretName": "tencent-ca"}},
              "secret": {"token": "t"}}
    objs = render_objects(values)
    config = bridge_config(objs)
    assert config["TIMBRIDGE_TLS_CERT"] == "/etc/timbridge/tls/tls.crt"
    assert config["TIMBRIDGE_TLS_KEY"] == "/etc/timbridge/tls/tls.key"
    assert config["TIMBRIDGE_TLS_CLIENT_CA"] == "/etc/timbridge/tls-client-ca/ca.crt"
    assert config["TIMBRIDGE_TRUSTED_PROXY"] == "10.0.0.0/8"
    pod = workload(objs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert volumes["tls"] == "callback-tls" and volumes["tls-client-ca"] == "tencent-ca"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["tls"]["mountPath"] == "/etc/timbridge/tls" and "subPath" not in mounts["tls"]
    with pytest.raises(helm.HelmError, match="clientCASecretName needs"):
        helmrender.render({"bridge": {"sdkappids": ["1"], "tls": {"clientCASecretName": "x"}},
                           "secret": {"token": "t"}})
    with pytest.raises(helm.HelmError, match="allowTencentEgress needs"):
        helmrender.render({"bridge": {"sdkappids": ["1"], "allowTencentEgress": True},
                           "secret": {"token": "t"}})
    # Development: any SdkAppid, a token if there is one.
    ref, _ = token_env({"bridge": {"allowAnySdkappid": True}})
    assert ref["valueFrom"]["secretKeyRef"]["optional"] is True


def test_template_refuses_inconsistent_shutdown():
    with pytest.raises(helm.HelmError, match="delaySeconds"):
        helmrender.render({"shutdown": {"delaySeconds": 30, "timeoutSeconds": 20}})


# --- The auditor (audit.enabled) ---------------------------------------------------------------

def auditor(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [o for o in by_kind(objs, "Deployment") + by_kind(objs, "StatefulSet") if is_auditor(o)]
    return found


def test_only_the_audit_scenario_runs_an_auditor(case):
    values, objs = case
    enabled = ((values or {}).get("audit") or {}).get("enabled", False)
    # Its workload, its Service and its NetworkPolicy.
    assert len([o for o in objs if is_auditor(o)]) == (3 if enabled else 0)


def test_audit_scenario_runs_one_hardened_auditor_apart_from_the_bridge():
    objs = render_objects(helmrender.load_values(CHART / "ci" / "audit-values.yaml"))
    audit = auditor(objs)
    assert audit["spec"]["replicas"] == 1, "replicas would share the consumer"
    assert audit["spec"]["strategy"]["type"] == "Recreate"
    pod = audit["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["audit"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TIMBRIDGE_REST_MAX_RATE"]["value"] == "10"
    assert env["TIMBRIDGE_GAP_GRACE"]["value"] == "30s"
    assert env["TIM_APP_1400000001_REST_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "tim-production", "key": "secret-key"}
    assert env["TIM_APP_1400000001_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "tim-production"
    assert container["envFrom"] == workload(objs)["spec"]["template"]["spec"]["containers"][0]["envFrom"][:1]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Neither the bridge's Deployment nor its Service selects the auditor's pods.
    labels = audit["spec"]["template"]["metadata"]["labels"]
    bridge_selector = workload(objs)["spec"]["selector"]["matchLabels"]
    service, admin_service = bridge_services(objs)
    for selector in (bridge_selector, service["spec"]["selector"], admin_service["spec"]["selector"]):
        assert not all(labels.get(k) == v for k, v in selector.items()), selector
    (audit_service,) = [o for o in by_kind(objs, "Service") if is_auditor(o)]
    assert audit_service["spec"]["selector"] == audit["spec"]["selector"]["matchLabels"]
    # The ServiceMonitor scrapes both Services.
    monitor = one(objs, "ServiceMonitor")["spec"]["selector"]
    (names,) = [e["values"] for e in monitor["matchExpressions"] if e["key"] == "app.kubernetes.io/name"]
    for svc in (admin_service, audit_service):
        assert svc["metadata"]["labels"]["app.kubernetes.io/name"] in names
        assert svc["metadata"]["labels"]["app.kubernetes.io/instance"] == monitor["matchLabels"]["app.kubernetes.io/instance"]
        assert "metrics" in [p["name"] for p in svc["spec"]["ports"]]


@pytest.mark.parametrize("values,message", [
    ({"audit": {"enabled": True}, "bridge": {"sink": "stdout"}, "apps": [APP]}, "needs bridge.sink nats or kafka"),
    ({"audit": {"enabled": True}, "bridge": {"sink": "nats"}, "apps": [APP]}, "needs apps with rest"),
], ids=["stdout", "no-rest"])
def test_template_refuses_an_auditor_it_cannot_run(values, message):
    with pytest.raises(helm.HelmError, match=message):
        helmrender.render(values)


def test_the_auditor_accepts_the_pod_environment_the_audit_scenario_renders(tmp_path):
    """The auditor's container environment as the pod gets it (ConfigMap, --config file, the
    Secrets' values): the real binary starts, serves /healthz, and is not ready while the
    rendered NATS address does not answer."""
    objs = render_objects(helmrender.load_values(CHART / "ci" / "audit-values.yaml"))
    config_file = tmp_path / "apps.yaml"
    apps_map = [o for o in by_kind(objs, "ConfigMap") if "apps.yaml" in o.get("data", {})][0]
    config_file.write_text(apps_map["data"]["apps.yaml"])
    admin = free_port()
    container = auditor(objs)["spec"]["template"]["spec"]["containers"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMBRIDGE_")}
    env.update(bridge_config(objs))
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env.update({name: f"value-of-{name}" for name in app_credential_variables(objs)})
    env.update({"TIMBRIDGE_CONFIG": str(config_file), "TIMBRIDGE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
                "TIMBRIDGE_NATS_URL": f"nats://127.0.0.1:{free_port()}"})
    proc = Process([str(bridge_binary()), *container["args"]], "timbridge-audit", env=env)
    try:
        wait_for("the auditor's /healthz",
                 lambda: not proc.alive() or http("GET", f"http://127.0.0.1:{admin}/healthz")[0] == 200)
        assert proc.alive(), proc.output()
        assert http("GET", f"http://127.0.0.1:{admin}/readyz")[0] == 503
    finally:
        proc.stop()


def test_the_auditor_follows_a_kafka_bridge():
    values = helmrender.load_values(CHART / "ci" / "audit-values.yaml")
    values["bridge"]["sink"] = "kafka"
    values["kafka"] = {"tls": {"caSecretName": "kafka-ca"}}
    objs = render_objects(values)
    pod = auditor(objs)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert bridge_config(objs)["TIMBRIDGE_SINK"] == "kafka", "the auditor reads the bridge's sink setting"
    assert {"name": "kafka-tls", "mountPath": "/etc/timbridge/kafka-tls", "readOnly": True} in container["volumeMounts"]
    assert {"name": "kafka-tls", "secret": {"secretName": "kafka-ca"}} in pod["volumes"]
    env = {e["name"] for e in container["env"]}
    assert "TIMBRIDGE_KAFKA_SASL_PASSWORD" in env and "TIMBRIDGE_NATS_TOKEN" not in env
    for obj in by_kind(objs, "Deployment") + by_kind(objs, "Service"):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_auditors_pods_have_their_own_network_policy():
    objs = render_objects(helmrender.load_values(CHART / "ci" / "audit-values.yaml"))
    audit = auditor(objs)
    (policy,) = [p for p in by_kind(objs, "NetworkPolicy") if is_auditor(p)]
    assert policy["spec"]["podSelector"]["matchLabels"] == audit["spec"]["selector"]["matchLabels"]
    assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == ["admin"]
    (bridge_policy,) = [p for p in by_kind(objs, "NetworkPolicy") if not is_auditor(p)]
    labels = audit["spec"]["template"]["metadata"]["labels"]
    selector = bridge_policy["spec"]["podSelector"]["matchLabels"]
    assert not all(labels.get(k) == v for k, v in selector.items())
    for obj in by_kind(objs, "NetworkPolicy"):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_audit_shards_are_a_statefulset_whose_ordinals_are_the_shards():
    values = helmrender.load_values(CHART / "ci" / "audit-values.yaml")
    values["audit"]["shards"] = 3
    objs = render_objects(values)
    audit = auditor(objs)
    assert audit["kind"] == "StatefulSet" and audit["spec"]["replicas"] == 3
    (service,) = [o for o in by_kind(objs, "Service") if is_auditor(o)]
    assert audit["spec"]["serviceName"] == service["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in audit["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TIMBRIDGE_AUDIT_SHARDS"] == "3" and env["TIMBRIDGE_AUDIT_SHARD"] == "auto"
    for obj in by_kind(objs, "StatefulSet"):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- The ordered stream (audit.ordered) ----------------------------------------------------------

def auditor_env(objs: list[dict[str, Any]]) -> dict[str, str | None]:
    """The auditor container's own variables (value, or None for one from a Secret)."""
    container = auditor(objs)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def ordered_env(objs: list[dict[str, Any]]) -> dict[str, str | None]:
    return {k: v for k, v in auditor_env(objs).items() if k.startswith("TIMBRIDGE_ORDERED_")}


def audit_values(**ordered: Any) -> dict[str, Any]:
    values = helmrender.load_values(CHART / "ci" / "audit-values.yaml")
    if ordered:
        values["audit"]["ordered"] = ordered
    return values


def kafka_audit_values(**ordered: Any) -> dict[str, Any]:
    values = audit_values(**ordered)
    values["bridge"]["sink"] = "kafka"
    return values


def test_the_auditor_publishes_the_ordered_stream_on_nats_by_default():
    objs = render_objects(audit_values())
    assert ordered_env(objs) == {
        "TIMBRIDGE_ORDERED_SUBJECT": "tim-ordered.{partition}",
        "TIMBRIDGE_ORDERED_STREAM": "TIM_ORDERED",
        "TIMBRIDGE_ORDERED_MAX_HELD_BYTES": "64MiB",
    }
    # Outside the bridge's stream subjects (tim.>), as --ordered-subject must be.
    assert not ordered_env(objs)["TIMBRIDGE_ORDERED_SUBJECT"].startswith("tim.")
    assert bridge_config(objs)["TIMBRIDGE_NATS_STREAM_SUBJECTS"] == "tim.>"
    # The settings are the auditor's alone: the bridge's ConfigMap (which the auditor reads
    # too) and the bridge's container carry none of them.
    container = workload(objs)["spec"]["template"]["spec"]["containers"][0]
    bridge_names = set(bridge_config(objs)) | {e["name"] for e in container.get("env", [])}
    assert not any(n.startswith("TIMBRIDGE_ORDERED_") for n in bridge_names)


def test_the_ordered_stream_follows_a_kafka_bridge():
    objs = render_objects(kafka_audit_values())
    assert ordered_env(objs) == {
        "TIMBRIDGE_ORDERED_TOPIC": "tim-ordered",
        "TIMBRIDGE_ORDERED_MAX_HELD_BYTES": "64MiB",
    }


def test_the_ordered_values_set_the_ordered_flags():
    ordered = {"subject": "orders.{sdkappid}.{partition}", "stream": "ORDERS",
               "topic": "orders", "maxHeldBytes": "256MiB"}
    assert ordered_env(render_objects(audit_values(**ordered))) == {
        "TIMBRIDGE_ORDERED_SUBJECT": "orders.{sdkappid}.{partition}",
        "TIMBRIDGE_ORDERED_STREAM": "ORDERS",
        "TIMBRIDGE_ORDERED_MAX_HELD_BYTES": "256MiB",
    }
    assert ordered_env(render_objects(kafka_audit_values(**ordered))) == {
        "TIMBRIDGE_ORDERED_TOPIC": "orders",
        "TIMBRIDGE_ORDERED_MAX_HELD_BYTES": "256MiB",
    }


def test_a_kafka_broker_without_transactions_gets_the_idempotent_ordered_producer():
    # audit.ordered.transactions false: --ordered-no-transactions (tansu 0.6 has no EndTxn).
    env = ordered_env(render_objects(kafka_audit_values(transactions=False)))
    assert env["TIMBRIDGE_ORDERED_NO_TRANSACTIONS"] == "true"
    # On NATS the value means nothing and sets nothing.
    assert "TIMBRIDGE_ORDERED_NO_TRANSACTIONS" not in ordered_env(
        render_objects(audit_values(transactions=False)))


@pytest.mark.parametrize("values", [audit_values, kafka_audit_values], ids=["nats", "kafka"])
def test_ordered_disabled_passes_no_ordered_flag(values):
    objs = render_objects(values(enabled=False))
    assert ordered_env(objs) == {}
    # The rest of the auditor is unchanged.
    assert auditor_env(objs)["TIMBRIDGE_GAP_GRACE"] == "30s"
    assert auditor(objs)["spec"]["template"]["spec"]["containers"][0]["args"] == ["audit"]


def test_ordered_settings_without_the_auditor_render_nothing():
    # audit.ordered.enabled is on by default: it takes effect only with audit.enabled.
    objs = render_objects({"audit": {"ordered": {"enabled": True}}})
    assert [o for o in objs if is_auditor(o)] == []


def test_sharded_auditors_each_publish_the_ordered_stream():
    values = audit_values()
    values["audit"]["shards"] = 3
    env = ordered_env(render_objects(values))
    assert env["TIMBRIDGE_ORDERED_SUBJECT"] == "tim-ordered.{partition}"


@pytest.mark.parametrize("subject,stream_subjects", [
    ("tim.ordered.{partition}", "tim.>"),
    ("tim.{sdkappid}.{partition}", "tim.>"),
    ("orders.{partition}", "tim.>,orders.*"),
    ("tim-ordered.{partition}", "tim-ordered.>"),
], ids=["inside-default", "sdkappid", "wildcard", "own-wildcard"])
def test_template_refuses_an_ordered_subject_inside_the_bridges_stream(subject, stream_subjects):
    values = audit_values(subject=subject)
    values["nats"] = {"streamSubjects": stream_subjects}
    with pytest.raises(helm.HelmError, match="lies inside nats.streamSubjects"):
        helmrender.render(values)


@pytest.mark.parametrize("subject,stream_subjects", [
    ("tim-ordered.{partition}", "tim.>"),
    ("orders.{partition}", "tim.>,orders.x"),
    ("tim.ordered.{partition}", "tim.*"),
], ids=["default", "literal", "shallower-wildcards"])
def test_template_accepts_an_ordered_subject_outside_the_bridges_stream(subject, stream_subjects):
    values = audit_values(subject=subject)
    values["nats"] = {"streamSubjects": stream_subjects}
    assert ordered_env(render_objects(values))["TIMBRIDGE_ORDERED_SUBJECT"] == subject


def test_template_refuses_an_ordered_stream_the_auditor_would_refuse():
    with pytest.raises(helm.HelmError, match="must not contain {command}"):
        helmrender.render(audit_values(subject="tim-ordered.{command}.{partition}"))
    with pytest.raises(helm.HelmError, match="other than the bridge's"):
        helmrender.render(audit_values(stream="TIM"))


def test_the_ordered_subject_check_is_for_nats_only():
    # On Kafka the subject is not used; its topic lives beside the bridge's topics.
    values = kafka_audit_values(subject="tim.ordered.{partition}")
    assert "TIMBRIDGE_ORDERED_SUBJECT" not in ordered_env(render_objects(values))


def test_auditor_variables_name_only_real_audit_flags():
    """Every TIMBRIDGE_* variable the auditor's container sets itself (the ConfigMap is the
    bridge's, checked against `serve`) is one `timbridge audit --help` lists, for NATS, Kafka,
    shards and the ordered stream."""
    help_text = subprocess.run([str(bridge_binary()), "audit", "--help"], check=True,
                               capture_output=True, text=True).stdout
    known = set(re.findall(r"\[env: (TIMBRIDGE_[A-Z_]+)", help_text))
    sharded = audit_values()
    sharded["audit"]["shards"] = 2
    for values in (audit_values(), kafka_audit_values(), sharded):
        names = {n for n in auditor_env(render_objects(values)) if n.startswith("TIMBRIDGE_")}
        assert names - known == set()

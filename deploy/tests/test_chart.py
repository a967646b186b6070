"""The Helm chart and the compose file, checked offline.

Renders helm/sluice with its default values and with helm/sluice/ci/custom-values.yaml
(helm-python-sdk: Helm v4 as a library), lints it strictly, validates every rendered
manifest against the Kubernetes schemas (kubernetes-validate, strict: unknown fields are
errors), and checks that the values land where they should. Run by tests/deploy.rs with the
tools scripts/ensure-deps.sh installs.
"""

import pathlib
import re
import unittest

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sluice"
CUSTOM = CHART / "ci" / "custom-values.yaml"
KUBE = "1.30.0"


def render(values=None):
    out = helm.Chart.load(str(CHART)).render(values, name="demo", namespace="streaming", is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    notes = next(t for p, t in out.items() if p.endswith("NOTES.txt"))
    return docs, notes


def find(docs, kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError(f"no {kind} {name} in {[(d['kind'], d['metadata']['name']) for d in docs]}")


def containers(doc):
    return doc["spec"]["template"]["spec"]["containers"]


class Chart(unittest.TestCase):
    def setUp(self):
        self.custom = yaml.safe_load(CUSTOM.read_text())

    def test_lints_clean_strictly(self):
        for values in (None, self.custom):
            report = helm.lint(str(CHART), values, strict=True, kube_version="v" + KUBE)
            problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
            self.assertEqual(report.get("errors") or [], [], report)
            self.assertEqual(problems, [], report)

    def test_every_manifest_is_valid_kubernetes(self):
        for values in (None, self.custom):
            docs, _ = render(values)
            self.assertGreater(len(docs), 15)
            for d in docs:
                with self.subTest(kind=d["kind"], name=d["metadata"]["name"]):
                    kubernetes_validate.validate(d, KUBE, strict=True)

    def test_default_shape(self):
        docs, notes = render()
        self.assertEqual(find(docs, "StatefulSet", "demo-sluice-partition-node")["spec"]["replicas"], 3)
        self.assertEqual(find(docs, "StatefulSet", "demo-sluice-etcd")["spec"]["replicas"], 3)
        self.assertEqual(find(docs, "Deployment", "demo-sluice-gateway")["spec"]["replicas"], 2)
        coordinator = find(docs, "Deployment", "demo-sluice-group-coordinator")
        self.assertEqual(coordinator["spec"]["replicas"], 2)
        # Each coordinator advertises its pod IP: gateways dial the active one directly.
        env = {e["name"]: e for e in coordinator["spec"]["template"]["spec"]["containers"][0]["env"]}
        self.assertEqual(env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP")
        self.assertTrue(env["SLUICE_ADVERTISE"]["value"].startswith("$(POD_IP):"))
        # Every gateway is a Kafka broker too, telling clients its pod IP.
        gateway = containers(find(docs, "Deployment", "demo-sluice-gateway"))[0]
        self.assertIn({"name": "kafka", "containerPort": 9092, "protocol": "TCP"}, gateway["ports"])
        genv = {e["name"]: e for e in gateway["env"]}
        self.assertEqual(genv["SLUICE_GATEWAY__KAFKA_ADVERTISE"]["value"], "$(POD_IP):9092")
        ports = find(docs, "Service", "demo-sluice-gateway")["spec"]["ports"]
        self.assertIn(9092, [p["port"] for p in ports])
        self.assertEqual(find(docs, "Deployment", "demo-sluice-connect-runner")["spec"]["replicas"], 1)
        sp = find(docs, "Deployment", "demo-sluice-stream-processor")
        self.assertEqual(sp["spec"]["replicas"], 1)
        self.assertEqual(containers(sp)[0]["command"][0], "sluice-stream-processor")
        self.assertIn({"name": "data", "emptyDir": {}}, sp["spec"]["template"]["spec"]["volumes"])
        self.assertFalse([d for d in docs if d["kind"] == "HorizontalPodAutoscaler"])
        self.assertIn("kubectl -n streaming port-forward svc/demo-sluice-gateway 7070:7070", notes)
        etcd = " ".join(containers(find(docs, "StatefulSet", "demo-sluice-etcd"))[0]["command"])
        self.assertEqual(len(re.findall(r"demo-sluice-etcd-\d=http://", etcd)), 3, etcd)

    def test_custom_values_change_replicas_storage_and_resources(self):
        docs, notes = render(self.custom)
        nodes = find(docs, "StatefulSet", "demo-sluice-partition-node")
        self.assertEqual(nodes["spec"]["replicas"], 5)
        claim = nodes["spec"]["volumeClaimTemplates"][0]["spec"]
        self.assertEqual(claim["resources"]["requests"]["storage"], "200Gi")
        self.assertEqual(claim["storageClassName"], "fast-ssd")
        self.assertEqual(containers(nodes)[0]["resources"]["requests"], {"cpu": "2", "memory": "4Gi"})
        gw = find(docs, "Deployment", "demo-sluice-gateway")
        self.assertNotIn("replicas", gw["spec"], "the autoscaler owns the gateway count")
        hpa = find(docs, "HorizontalPodAutoscaler", "demo-sluice-gateway")
        self.assertEqual((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]), (3, 12))
        self.assertEqual(find(docs, "Service", "demo-sluice-gateway")["spec"]["type"], "LoadBalancer")
        self.assertEqual(find(docs, "Deployment", "demo-sluice-group-coordinator")["spec"]["replicas"], 3)
        self.assertEqual(find(docs, "Deployment", "demo-sluice-connect-runner")["spec"]["replicas"], 2)
        etcd = find(docs, "StatefulSet", "demo-sluice-etcd")
        self.assertEqual(etcd["spec"]["replicas"], 5)
        self.assertEqual(etcd["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "8Gi")
        endpoints = find(docs, "ConfigMap", "demo-sluice-gateway")["data"]["sluice.toml"]
        self.assertEqual(endpoints.count(".demo-sluice-etcd.streaming.svc:2379"), 5)
        self.assertIn("3-12 (autoscaled)", notes)
        import tomllib

        node = tomllib.loads(find(docs, "ConfigMap", "demo-sluice-partition-node")["data"]["sluice.toml"])
        self.assertEqual(node["telemetry"], {"otlp_endpoint": "http://otel-collector.observability:4317", "metrics_interval_ms": 5000})

    def test_external_etcd(self):
        docs, notes = render({"etcd": {"enabled": False, "endpoints": ["etcd.infra:2379"]}})
        self.assertFalse([d for d in docs if d["metadata"]["name"].endswith("-etcd")])
        self.assertIn('endpoints = ["http://etcd.infra:2379"]', find(docs, "ConfigMap", "demo-sluice-gateway")["data"]["sluice.toml"])
        self.assertIn("external etcd at etcd.infra:2379", notes)
        with self.assertRaises(helm.HelmError):
            render({"etcd": {"enabled": False}})

    def test_pods_run_as_non_root_with_grpc_probes_resources_and_budgets(self):
        docs, _ = render()
        workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
        self.assertEqual(len(workloads), 6)
        for w in workloads:
            name = w["metadata"]["name"]
            pod = w["spec"]["template"]["spec"]
            self.assertTrue(pod["securityContext"]["runAsNonRoot"], name)
            for c in pod["containers"]:
                self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"], name)
                self.assertIn("requests", c["resources"], name)
                if not name.endswith("-etcd"):
                    self.assertIn("grpc", c["readinessProbe"], name)
                    self.assertIn("grpc", c["livenessProbe"], name)
            budget = find(docs, "PodDisruptionBudget", name)
            self.assertEqual(budget["spec"]["selector"]["matchLabels"], w["spec"]["selector"]["matchLabels"])
        nodes = find(docs, "StatefulSet", "demo-sluice-partition-node")
        cmd = containers(nodes)[0]["command"][-1]
        self.assertIn("--node-id $(( ${POD_NAME##*-} + 1 ))", cmd)
        self.assertIn("--advertise ${POD_NAME}.demo-sluice-partition-node.streaming.svc:7070", cmd)

    def test_config_files_are_valid_toml_for_the_services(self):
        import tomllib

        docs, _ = render()
        for d in docs:
            if d["kind"] == "ConfigMap":
                cfg = tomllib.loads(d["data"]["sluice.toml"])
                self.assertEqual(cfg["listen"], "0.0.0.0:7070")
                self.assertEqual(len(cfg["etcd"]["endpoints"]), 3)
        node = tomllib.loads(find(docs, "ConfigMap", "demo-sluice-partition-node")["data"]["sluice.toml"])
        self.assertEqual(node["data_dir"], "/data")
        self.assertEqual(node["replication"]["lag_time_max_ms"], 10000)

    def test_every_value_is_documented(self):
        # A key is documented by a comment just above it or above one of its parents (the
        # contents of resources and security contexts are plain Kubernetes).
        lines = (CHART / "values.yaml").read_text().splitlines()
        undocumented = []
        for i, line in enumerate(lines):
            if not re.match(r"^\s*[A-Za-z][A-Za-z0-9]*:", line):
                continue
            j, indent, documented = i, len(line) - len(line.lstrip()), False
            while j >= 0:
                if j > 0 and lines[j - 1].strip().startswith("#"):
                    documented = True
                    break
                k = j - 1
                while k >= 0 and (not lines[k].strip() or lines[k].strip().startswith("#") or len(lines[k]) - len(lines[k].lstrip()) >= indent):
                    k -= 1
                if k < 0:
                    break
                j, indent = k, len(lines[k]) - len(lines[k].lstrip())
            if not documented:
                undocumented.append(line.strip())
        self.assertEqual(undocumented, [])


class Observability(unittest.TestCase):
    # How the collector's Prometheus exporter names the OTLP metrics the services export
    # (tests/telemetry.rs checks those arrive): dots become underscores, counters get _total,
    # the ms unit becomes _milliseconds.
    EXPORTED = {
        "sluice_produce_requests_total", "sluice_produce_records_total", "sluice_produce_bytes_total",
        "sluice_produce_duration_milliseconds_bucket", "sluice_fetch_bytes_total", "sluice_fetch_responses_total",
        "sluice_fetch_records_total", "sluice_fetch_requests_total",
        "sluice_gateway_active_streams", "sluice_partition_log_end_offset", "sluice_partition_high_watermark",
        "sluice_partition_isr_size", "sluice_partition_storage_bytes", "sluice_node_under_replicated_partitions",
        "sluice_group_lag", "sluice_group_members",
        "sluice_connect_records_total", "sluice_connect_errors_total", "sluice_connect_tasks",
    }

    def test_dashboard_queries_only_exported_metrics(self):
        import json

        d = json.loads((ROOT / "deploy" / "grafana" / "sluice-dashboard.json").read_text())
        self.assertGreaterEqual(len(d["panels"]), 10)
        used = set()
        for p in d["panels"]:
            self.assertTrue(p["targets"], p["title"])
            for t in p["targets"]:
                used.update(re.findall(r"sluice_[a-z_]+", t["expr"]))
        self.assertEqual(used - self.EXPORTED, set(), "panels query metrics nothing exports")
        self.assertGreaterEqual(len(used), 10)

    def test_collector_receives_otlp_and_serves_prometheus(self):
        c = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
        self.assertIn("grpc", c["receivers"]["otlp"]["protocols"])
        metrics = c["service"]["pipelines"]["metrics"]
        self.assertEqual((metrics["receivers"], metrics["exporters"]), (["otlp"], ["prometheus"]))
        self.assertIn("otlp", c["service"]["pipelines"]["traces"]["receivers"])


class Compose(unittest.TestCase):
    def test_compose_runs_the_whole_mesh(self):
        c = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
        names = set(c["services"])
        self.assertTrue({"etcd", "partition-node-1", "partition-node-2", "partition-node-3", "gateway",
                         "group-coordinator-1", "group-coordinator-2", "connect-runner", "stream-processor"} <= names, names)
        for n in (1, 2):
            env = c["services"][f"group-coordinator-{n}"]["environment"]
            self.assertEqual(env["SLUICE_ADVERTISE"], f"group-coordinator-{n}:7070")
        for n in (1, 2, 3):
            env = c["services"][f"partition-node-{n}"]["environment"]
            self.assertEqual(str(env["SLUICE_NODE_ID"]), str(n))
        self.assertIn("7070:7070", [str(p) for p in c["services"]["gateway"]["ports"]])
        self.assertIn("9092:9092", [str(p) for p in c["services"]["gateway"]["ports"]])
        self.assertEqual(c["services"]["gateway"]["environment"]["SLUICE_GATEWAY__KAFKA_LISTEN"], "0.0.0.0:9092")

    def test_dockerfile_builds_in_stages_and_runs_as_non_root(self):
        d = (ROOT / "deploy" / "Dockerfile").read_text()
        self.assertGreaterEqual(len(re.findall(r"^FROM ", d, re.M)), 2)
        user = re.findall(r"^USER (\S+)", d, re.M)
        self.assertTrue(user and user[-1] not in ("root", "0"), user)
        for b in ("sluice", "sluice-gateway", "sluice-partition-node", "sluice-group-coordinator", "sluice-connect-runner",
                  "sluice-stream-processor"):
            self.assertIn(f"/usr/local/bin/{b}", d)


if __name__ == "__main__":
    unittest.main()

"""The cluster configurations cannot be launched here; these checks keep them valid: the Ray
cluster launcher's own schema, and the shape and versions of the KubeRay manifests."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

INFRA = Path(__file__).resolve().parents[1] / "infra"


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_cluster_launcher_config_passes_rays_schema():
    config = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1
    assert any("torch==2.13.0" in c for c in config["setup_commands"])  # torch first, as `make install`


def test_a_broken_cluster_config_is_rejected():
    config = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    config["available_node_types"]["head"]["node_confg"] = config["available_node_types"]["head"].pop("node_config")
    with pytest.raises(Exception, match="node_config"):
        validate_config(prepare_config(config))


def ray_clusters() -> list[tuple[str, dict]]:
    """(file, RayCluster spec) of every manifest: the RayCluster and the RayJob's cluster."""
    specs = []
    for path in sorted((INFRA / "kuberay").glob("*.yaml")):
        for doc in load_all(path):
            assert doc["apiVersion"] in ("ray.io/v1", "v1"), f"{path.name}: {doc['apiVersion']}"
            if doc["kind"] == "RayCluster":
                specs.append((path.name, doc["spec"]))
            elif doc["kind"] == "RayJob":
                assert "brainomaly tune" in doc["spec"]["entrypoint"]
                specs.append((path.name, doc["spec"]["rayClusterSpec"]))
    return specs


@pytest.mark.parametrize("name, spec", ray_clusters())
def test_kuberay_clusters_match_the_installed_ray_and_request_gpus(name, spec):
    assert spec["rayVersion"] == ray.__version__, f"{name}: rayVersion {spec['rayVersion']} vs ray {ray.__version__}"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]]
    assert all(w["image"] == head["image"] for w in workers), f"{name}: one image for head and workers"
    for group, container in zip(spec["workerGroupSpecs"], workers):
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_image_is_built_on_the_installed_ray():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(rf"FROM rayproject/ray:{re.escape(ray.__version__)}-py311", dockerfile)
    assert "torch==2.13.0" in dockerfile


def test_the_rayjob_overrides_are_valid_params():
    from pipelines.params import load_params

    [job] = [d for d in load_all(INFRA / "kuberay" / "rayjob.yaml") if d["kind"] == "RayJob"]
    overrides = re.findall(r"--set (\S+)", job["spec"]["entrypoint"])
    params = load_params(INFRA.parent / "params.yaml", overrides)
    assert overrides and params.train.use_gpu and params.tune.storage_path.startswith("s3://")


PROMETHEUS = INFRA / "prometheus"
PROMQL_NAME = re.compile(r"\b(brainomaly_[a-z_]+)")


def exported_series() -> set[str]:
    """Every series name the endpoint's registry can expose (counters add _total, histograms
    _bucket/_sum/_count)."""
    from serving.metrics import EndpointMetrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {m.name + s for m in EndpointMetrics().registry.collect() for s in suffixes[m.type]}


@pytest.mark.program("promtool", package="prometheus")
def test_alert_rules_pass_their_promtool_unit_tests():
    for command in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"], ["check", "config", "prometheus.yml"]):
        run = subprocess.run(["promtool", *command], cwd=PROMETHEUS, capture_output=True, text=True)
        assert run.returncode == 0, f"promtool {' '.join(command)}:\n{run.stdout}{run.stderr}"


def test_alerts_and_dashboard_use_only_metrics_the_endpoint_exports():
    exported = exported_series()
    rules = [rule["expr"] for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for rule in group["rules"]]
    dashboard = json.loads((INFRA / "grafana" / "brainomaly-endpoint.json").read_text())
    panels = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in rules + panels for name in PROMQL_NAME.findall(expr)}
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"
    drift = {name for name in exported if name.startswith("brainomaly_drift_")}
    assert drift <= {name for expr in panels for name in PROMQL_NAME.findall(expr)} | {"brainomaly_drift_window"}


@pytest.mark.parametrize("name, spec", ray_clusters())
def test_kuberay_clusters_require_rays_token(name, spec):
    assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: Ray token authentication is off"


def test_the_launched_cluster_requires_rays_token_and_keeps_its_dashboard_local():
    config = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    starts = config["head_start_ray_commands"][-1:] + config["worker_start_ray_commands"][-1:]
    assert all("RAY_AUTH_MODE=token" in command for command in starts), starts
    assert "--dashboard-host=127.0.0.1" in starts[0]
    assert any(target.endswith(".ray/auth_token") for target in config["file_mounts"])


def test_the_image_leaves_data_databases_and_history_out():
    ignored = set((INFRA.parent / ".dockerignore").read_text().split())
    assert {".git", "data", "mlflow.db", "mlartifacts", ".dvc/cache", ".venv"} <= ignored


def test_the_mlflow_server_starts_with_authentication():
    script = (INFRA / "mlflow" / "server.sh").read_text()
    assert "--app-name basic-auth" in script and "MLFLOW_ADMIN_PASSWORD:?" in script
    result = subprocess.run(["bash", str(INFRA / "mlflow" / "server.sh")], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "MLFLOW_ADMIN_PASSWORD" in result.stderr  # no password, no server

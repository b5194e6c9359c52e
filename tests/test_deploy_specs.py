"""The Kubernetes specs (infra/helm, infra/bento, infra/k8s) agree with the code they deploy.

No cluster here, so what can be checked is checked against the real things: probe paths against the
routes of the service's own ASGI app, ports against the service's BentoML config and the Dockerfile
BentoML renders from the container bentofile, pins against requirements.lock, the MLflow address every
client uses against MLflow's own Host-header check, the queues the DAGs use against the worker sets
that listen on them. With helm installed (HATCHERY_HELM, or `helm` on PATH; `bash infra/k8s/check.sh`
fetches it) the two charts are rendered and the rendered objects are checked too.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
HELM_DIR = REPO / "infra" / "helm"
GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "default"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def airflow() -> dict:
    return load(HELM_DIR / "airflow-values.yaml")


@pytest.fixture(scope="module")
def service() -> dict:
    return load(HELM_DIR / "hatchery" / "values.yaml")


@pytest.fixture(scope="module")
def mlflow_values() -> dict:
    return load(HELM_DIR / "mlflow" / "values.yaml")


@pytest.fixture(scope="module")
def hatchery_app():
    """The service's Starlette app (routes only: models load at lifespan start, which never runs here)."""
    os.environ.setdefault("HATCHERY_ENV", "dev")
    from services.service import Hatchery

    return Hatchery, Hatchery.to_asgi()


def lock_pins() -> dict[str, str]:
    """name -> version of every pin in requirements.lock and requirements-torch.lock (torch's PyPI build)."""
    pins = {}
    text = (REPO / "requirements.lock").read_text() + (REPO / "requirements-torch.lock").read_text()
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def pin_map(packages: list[str]) -> dict[str, str]:
    out = {}
    for p in packages:
        name, _, version = p.partition("==")
        assert version, f"{p}: every package is pinned with =="
        out[name.lower().replace("_", "-")] = version
    return out


# --- Airflow chart values ------------------------------------------------------------------------------------
def test_airflow_executors_are_ones_airflow_3_has(airflow):
    executors = [e.strip() for e in airflow["executor"].split(",")]
    # CeleryKubernetesExecutor was removed in Airflow 3: multiple executors replace it.
    assert "CeleryKubernetesExecutor" not in executors
    assert set(executors) <= {"CeleryExecutor", "KubernetesExecutor"} and "KubernetesExecutor" in executors
    assert executors[0] == "CeleryExecutor", "the first executor is the default: CPU steps go to the Celery workers"


def test_airflow_image_is_the_locked_version(airflow):
    version = importlib.metadata.version("apache-airflow")
    assert airflow["airflowVersion"] == version == lock_pins()["apache-airflow"]
    image = airflow["images"]["airflow"]
    assert (image["repository"], image["tag"]) == (airflow["defaultAirflowRepository"], airflow["defaultAirflowTag"])
    dockerfile = (REPO / "infra" / "k8s" / "airflow.Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert base == f"apache/airflow:{version}-python{py}", "the image's Airflow and Python are the venv's"
    for lock in ("requirements-pip.lock", "requirements.lock"):
        assert lock in dockerfile and (REPO / lock).exists()


def test_airflow_uses_external_postgres_and_redis(airflow):
    assert airflow["postgresql"]["enabled"] is False and airflow["data"]["metadataSecretName"]
    assert airflow["redis"]["enabled"] is False and airflow["data"]["brokerUrlSecretName"]
    assert airflow["dagProcessor"]["enabled"] and airflow["triggerer"]["enabled"]


def test_airflow_git_sync_points_at_the_dags(airflow):
    dags = airflow["dags"]
    assert dags["gitSync"]["enabled"] and not dags["persistence"]["enabled"]
    folder = REPO / dags["gitSync"]["subPath"]
    assert (folder / "incubation.py").exists(), f"gitSync.subPath {folder} holds no incubation DAG"


def dag_queues() -> set[str]:
    """Every queue a task names in dags/ and the cluster profile (queue="..." literals, *_QUEUE constants)."""
    found = set()
    for folder in ("dags", "infra/cluster", "pipelines"):
        for f in (REPO / folder).glob("*.py"):
            text = f.read_text()
            found |= set(re.findall(r"\bqueue\s*=\s*[\"']([\w.-]+)[\"']", text))
            found |= set(re.findall(r"^GPU_QUEUE\s*=\s*[\"']([\w.-]+)[\"']", text, re.M))
    return found


def cluster_env() -> dict[str, str]:
    """The cluster profile's settings (infra/cluster/cluster.env): KEY=VALUE lines."""
    pairs = (ln.split("=", 1) for ln in (REPO / "infra/cluster/cluster.env").read_text().splitlines() if "=" in ln)
    return {k.strip(): v.split("#")[0].strip() for k, v in pairs if not k.lstrip().startswith("#")}


def test_gpu_routing_matches_the_cluster_profile(airflow):
    env = {e["name"]: e["value"] for e in airflow["env"]}
    profile = cluster_env()
    # The scheduler's cluster policy (infra/cluster/airflow_local_settings.py) routes by these settings.
    for key in ("HATCHERY_GPU_QUEUE", "HATCHERY_GPU_STAGES"):
        assert env[key] == profile[key], key
    queues = {s["queue"] for s in airflow["workers"]["celery"]["sets"]}
    assert env["HATCHERY_GPU_QUEUE"] in queues, "the GPU queue has no worker set listening on it"
    # git-sync puts the repository at <airflowHome>/dags/repo; the policy module must be importable from there.
    repo_root = "/opt/airflow/dags/repo"
    paths = env["PYTHONPATH"].split(":")
    assert any(
        p.startswith(repo_root) and (REPO / p[len(repo_root) :].lstrip("/") / "airflow_local_settings.py").exists()
        for p in paths
    ), f"no PYTHONPATH entry holds airflow_local_settings.py: {paths}"


def test_every_queue_has_workers_and_gpu_workers_sit_on_gpu_nodes(airflow):
    celery = airflow["workers"]["celery"]
    sets = {s["queue"]: s for s in celery["sets"]}
    served = set(sets) | ({DEFAULT_QUEUE} if celery.get("enableDefault", True) else set())
    assert dag_queues() | {GPU_QUEUE} <= served, f"queues without workers: {(dag_queues() | {GPU_QUEUE}) - served}"
    gpu = sets[GPU_QUEUE]
    assert gpu["nodeSelector"], "gpu workers need a GPU node selector"
    assert int(gpu["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])


def test_kubernetes_executor_pod_template(airflow):
    pod = yaml.safe_load(airflow["podTemplate"])
    assert pod["kind"] == "Pod"
    base = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    assert base, "the KubernetesExecutor runs the task in the container named `base`"
    image = airflow["images"]["airflow"]
    assert base[0]["image"] == f"{image['repository']}:{image['tag']}"
    gpu = {s["queue"]: s for s in airflow["workers"]["celery"]["sets"]}[GPU_QUEUE]
    assert pod["spec"]["nodeSelector"] == gpu["nodeSelector"]
    assert int(base[0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1


# --- MLflow server --------------------------------------------------------------------------------------------
def tracking_uris(airflow, service) -> list[str]:
    uris = [e["value"] for e in airflow["env"] if e["name"] == "MLFLOW_TRACKING_URI"]
    uris += [e["value"] for c in yaml.safe_load(airflow["podTemplate"])["spec"]["containers"] for e in c.get("env", [])
             if e["name"] == "MLFLOW_TRACKING_URI"]  # fmt: skip
    uris.append(service["env"]["MLFLOW_TRACKING_URI"])
    return uris


@pytest.fixture
def mlflow_security(monkeypatch):
    """MLflow's own server security module (mlflow/server/security_utils.py), loaded from its file: importing
    mlflow.server builds the whole tracking server; the module itself needs only two setting names."""
    spec = importlib.util.find_spec("mlflow")
    source = Path(spec.origin).parent / "server" / "security_utils.py"
    settings = types.ModuleType("mlflow.environment_variables")
    settings.MLFLOW_SERVER_ALLOWED_HOSTS = settings.MLFLOW_SERVER_CORS_ALLOWED_ORIGINS = None
    if "mlflow" not in sys.modules:
        monkeypatch.setitem(sys.modules, "mlflow", types.ModuleType("mlflow"))
    monkeypatch.setitem(sys.modules, "mlflow.environment_variables", settings)
    module_spec = importlib.util.spec_from_file_location("_mlflow_security_utils", source)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_every_mlflow_client_passes_mlflows_host_check(airflow, service, mlflow_values, mlflow_security):
    is_allowed_host_header, HEALTH_ENDPOINTS = mlflow_security.is_allowed_host_header, mlflow_security.HEALTH_ENDPOINTS
    uris = tracking_uris(airflow, service)
    assert len(uris) == 3
    for uri in uris:
        parts = urlsplit(uri)
        assert parts.port == mlflow_values["service"]["port"]
        # MLflow 3 answers 403 to a Host header it does not allow (health endpoints excepted, so probes
        # would pass while every client fails).
        assert is_allowed_host_header(mlflow_values["allowedHosts"], parts.netloc), uri
    assert mlflow_values["probes"]["path"] in HEALTH_ENDPOINTS


# --- the service ---------------------------------------------------------------------------------------------
def test_probes_point_at_real_endpoints(service, hatchery_app):
    _, app = hatchery_app
    get_routes = {r.path for r in app.routes if "GET" in (getattr(r, "methods", None) or ())}
    probes = service["probes"]
    for name in ("startup", "liveness", "readiness"):
        assert probes[name]["path"] in get_routes, f"{name} probe {probes[name]['path']} is no GET route"
    # Readiness must wait for the models (BentoML's /readyz asks __is_ready__); /livez is up before that.
    assert probes["readiness"]["path"] == "/readyz" and probes["liveness"]["path"] == "/livez"


def test_service_port_and_host(service, hatchery_app):
    svc, _ = hatchery_app
    assert service["port"] == svc.config.get("http", {}).get("port", 3000) == service["service"]["port"]
    assert service["host"] == "0.0.0.0", "the service binds 127.0.0.1 unless told otherwise; a probe would fail"


@pytest.fixture(scope="module")
def bento():
    from bentoml._internal.bento.build_config import BentoBuildConfig

    with open(REPO / "infra" / "bento" / "bentofile.yaml") as f:
        return BentoBuildConfig.from_yaml(f).with_defaults()


def test_container_bento_packs_the_served_code_at_the_locked_pins(bento):
    served = load(REPO / "services" / "bentofile.yaml")
    assert bento.service == served["service"] and bento.include == served["include"]
    ours, theirs, lock = pin_map(bento.python.packages), pin_map(served["python"]["packages"]), lock_pins()
    assert {k: ours.get(k) for k in theirs} == theirs, "the image drifted from services/bentofile.yaml"
    assert {k: lock.get(k) for k in ours} == ours, "a pin differs from requirements.lock"
    assert "psycopg2-binary" in ours, "replicas share state through PostgreSQL (HATCHERY_STATE_URL)"


def test_rendered_dockerfile_matches_the_deployment(bento, service, tmp_path):
    from bentoml._internal.container.generate import generate_containerfile

    text = generate_containerfile(bento.docker, str(REPO), conda=bento.conda, bento_fs=tmp_path)
    assert re.search(rf"^EXPOSE {service['port']}$", text, re.M), "the image exposes the port the probes use"
    assert re.search(r"^USER bentoml$", text, re.M), "the pod runs as non-root"
    assert f"python:{sys.version_info.major}.{sys.version_info.minor}" in text
    assert "libgomp1" in text


# --- rendered with helm -----------------------------------------------------------------------------------------
def helm() -> str | None:
    return os.environ.get("HATCHERY_HELM") or shutil.which("helm")


def render(chart: str, release: str) -> list[dict]:
    exe = helm()
    if not exe:
        pytest.skip("helm is not installed (bash infra/k8s/check.sh fetches it)")
    lint = subprocess.run([exe, "lint", "--strict", str(HELM_DIR / chart)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run([exe, "template", release, str(HELM_DIR / chart)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_rendered_service_chart(service, hatchery_app):
    _, app = hatchery_app
    docs = {d["kind"]: d for d in render("hatchery", "hatchery")}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    routes = {r.path for r in app.routes}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes and ports[get["port"]] == service["port"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    args = container["args"]
    assert args[0] == "serve" and args[args.index("--host") + 1] == "0.0.0.0"
    assert int(args[args.index("--port") + 1]) == service["port"]
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] in ports
    assert (
        docs["Service"]["spec"]["selector"].items()
        <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    )


def test_rendered_mlflow_chart(mlflow_values):
    docs = {d["kind"]: d for d in render("mlflow", "hatchery-mlflow")}
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--serve-artifacts" in args and "--host=0.0.0.0" in args
    allowed = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert allowed == mlflow_values["allowedHosts"]
    assert docs["Service"]["metadata"]["name"] == "hatchery-mlflow"

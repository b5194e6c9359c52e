"""register_search: the search bundle as ONE version of the MLflow registered model `hatchery-search`.

The bundle folder is the model's artifact, loaded by a models-from-code pyfunc
(pipelines/search_pyfunc.py) — no pickled code. The version is tagged with the bundle's content
hash, the data version and the git commit. Registering an unchanged bundle again returns the
existing version (looked up by the hash tag) instead of creating a new one. The `champion` alias is
left to the promotion gates.

Output: models/search/registered.json {"name", "version", "bundle_hash", "created"}
"""

from __future__ import annotations

import logging

from components.config import Params
from pipelines.common import (
    REPO_ROOT,
    Paths,
    content_hash,
    git_commit,
    load_params,
    mlflow_run,
    tracking_uri,
    write_json,
)

log = logging.getLogger(__name__)

STEP = "register_search"
MODEL_NAME = "hatchery-search"


def run(params: Params, paths: Paths) -> dict:
    import mlflow
    from mlflow import MlflowClient

    from pipelines.train_ranker import bundle_dir

    bundle = bundle_dir(paths)
    if not (bundle / "manifest.json").exists():
        raise FileNotFoundError(f"no search bundle at {bundle}: run train_ranker first")
    bundle_hash = content_hash(bundle)
    data_version = content_hash(paths.split / "search", paths.validated / "search")
    mlflow.set_tracking_uri(tracking_uri(paths))
    client = MlflowClient()
    existing = []
    if client.search_registered_models(filter_string=f"name = '{MODEL_NAME}'"):
        existing = client.search_model_versions(f"name = '{MODEL_NAME}' and tag.bundle_hash = '{bundle_hash}'")
    if existing:
        version = max(int(v.version) for v in existing)
        log.info("bundle %s already registered as %s version %d", bundle_hash, MODEL_NAME, version)
        result = {"name": MODEL_NAME, "version": version, "bundle_hash": bundle_hash, "created": False}
    else:
        with mlflow_run(STEP, params, paths, inputs=[bundle], sections=("search",)):
            info = mlflow.pyfunc.log_model(
                name="search_bundle",
                python_model=str(REPO_ROOT / "pipelines" / "search_pyfunc.py"),
                artifacts={"bundle": str(bundle)},
                code_paths=[str(REPO_ROOT / "components"), str(REPO_ROOT / "pipelines")],
                pip_requirements=_requirements(),
                registered_model_name=MODEL_NAME,
            )
            version = int(info.registered_model_version)
            tags = {"bundle_hash": bundle_hash, "data_version": data_version, "git_commit": git_commit()}
            for k, v in tags.items():
                client.set_model_version_tag(MODEL_NAME, str(version), k, v)
            mlflow.set_tags({"registered_model": MODEL_NAME, "registered_version": version})
        log.info("registered %s version %d (bundle %s)", MODEL_NAME, version, bundle_hash)
        result = {"name": MODEL_NAME, "version": version, "bundle_hash": bundle_hash, "created": True}
    write_json(paths.models / "search" / "registered.json", result)
    return result


def _requirements() -> list[str]:
    """Pins of what loading the bundle imports, read from the installed versions."""
    from importlib.metadata import version

    pkgs = ("torch", "transformers", "onnxruntime", "faiss-cpu", "lightgbm", "numpy", "pandas", "pyarrow", "scipy",
            "safetensors")
    out = []
    for p in pkgs:
        try:
            out.append(f"{p}=={version(p)}")
        except Exception:  # noqa: BLE001 - a missing optional package is simply not pinned
            continue
    return out


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())

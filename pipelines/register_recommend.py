"""register_recommend: the bundle as ONE MLflow model version of `hatchery-recommend`, idempotently.

The model is logged models-from-code (pipelines/recommend_pyfunc.py) with the bundle folder as its
artifact and the project packages as code paths: no pickled objects. The version is tagged with
data_version, git_commit and bundle_hash (md5 of the bundle's files); if a version with the same
bundle_hash exists, it is reused and nothing new is registered. Aliases (champion) are the gates' job.

Output: models/recommend/registered.json {"name", "version", "bundle_hash", "created", "run_id"}
"""

from __future__ import annotations

import json
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

STEP = "register_recommend"
MODEL_NAME = "hatchery-recommend"
REQUIREMENTS = (
    "lightgbm==4.7.0",
    "mlflow==3.17.2",
    "numpy==2.4.6",
    "pandas==3.1.1",
    "pyarrow==25.0.1",
    "pydantic==2.14.4",
    "safetensors==0.8.0",
    "scipy==1.17.1",
    "torch==2.13.0",
)


def find_version(client, bundle_hash: str):
    """The existing version of MODEL_NAME carrying this bundle_hash, or None."""
    found = client.search_model_versions(f"name = '{MODEL_NAME}' and tags.bundle_hash = '{bundle_hash}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def run(params: Params, paths: Paths) -> dict:
    """Register the bundle unless an identical one is registered already; returns registered.json."""
    import mlflow
    from mlflow import MlflowClient

    bundle = paths.models / "recommend" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    bundle_hash = content_hash(bundle)
    mlflow.set_tracking_uri(tracking_uri(paths))
    client = MlflowClient()
    existing = find_version(client, bundle_hash)
    if existing is not None:
        out = {
            "name": MODEL_NAME,
            "version": int(existing.version),
            "bundle_hash": bundle_hash,
            "created": False,
            "run_id": existing.run_id,
        }
        log.info("bundle %s already registered as %s v%s; nothing new", bundle_hash, MODEL_NAME, existing.version)
    else:
        tags = {
            "data_version": manifest.get("data_version", "unknown"),
            "git_commit": git_commit(),
            "bundle_hash": bundle_hash,
        }
        with mlflow_run(STEP, params, paths, inputs=[bundle], sections=("recommend",)) as run_:
            info = mlflow.pyfunc.log_model(
                name="recommend",
                python_model=str(REPO_ROOT / "pipelines" / "recommend_pyfunc.py"),
                artifacts={"bundle": str(bundle)},
                code_paths=[str(REPO_ROOT / "components"), str(REPO_ROOT / "pipelines")],
                pip_requirements=list(REQUIREMENTS),
                registered_model_name=MODEL_NAME,
                tags=tags,
            )
            version = str(info.registered_model_version)
            for key, value in tags.items():
                client.set_model_version_tag(MODEL_NAME, version, key, value)
            client.update_model_version(MODEL_NAME, version, description=f"recommend bundle as of {manifest['as_of']}")
            mlflow.set_tags({"registered_version": version, "bundle_hash": bundle_hash})
        out = {
            "name": MODEL_NAME,
            "version": int(version),
            "bundle_hash": bundle_hash,
            "created": True,
            "run_id": run_.info.run_id,
        }
        log.info("registered %s v%s (bundle %s)", MODEL_NAME, version, bundle_hash)
    write_json(paths.models / "recommend" / "registered.json", out)
    return out


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())

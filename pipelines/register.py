"""register: a domain's bundle as ONE version of its MLflow registered model, idempotently.

The bundle folder is the model's artifact, loaded by the models-from-code entry artifacts/pyfunc.py
(no pickled code), with a sha256 manifest of its files beside it (artifacts/integrity.py); the
version is tagged with the bundle's content hash, the manifest's digest (what a download is checked
against before loading), the data version and the git commit. An unchanged bundle returns the
existing version instead of a new one. Aliases are the gate's and the rollout's job
(artifacts/registry.py).

DVC stages `register_search` and `register_recommend` run this module for their domain.

Output: models/<domain>/registered.json {"name", "version", "bundle_hash", "bundle_sha256", "created",
"run_id"} (bundle_sha256 is null for a version registered before manifests)

Usage: python -m pipelines.register search|recommend
"""

from __future__ import annotations

import logging
import sys

from artifacts.bundles import read_manifest
from artifacts.files import content_hash, write_json
from artifacts.paths import DOMAINS, Paths
from artifacts.registry import BUNDLE_HASH_TAG, BUNDLE_SHA256_TAG, Registry
from components.config import Params
from pipelines.common import git_commit, load_params, mlflow_run

log = logging.getLogger(__name__)


def step_name(domain: str) -> str:
    """The DVC stage and MLflow run name of one domain's registration."""
    return f"register_{domain}"


def run(domain: str, params: Params, paths: Paths) -> dict:
    """Register the domain's bundle unless an identical one is registered already; returns registered.json."""
    bundle = paths.bundle(domain)
    try:
        manifest = read_manifest(bundle)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {domain} bundle at {bundle}: run the domain's training stages first") from None
    registry = Registry.for_domain(domain, paths)
    data_version = manifest.get("data_version") or content_hash(paths.split / domain, paths.validated / domain)
    existing = registry.by_bundle_hash(content_hash(bundle))
    if existing is not None:
        version, created, run_id = existing, False, existing.run_id
        log.info("bundle already registered as %s v%s; nothing new", registry.name, version.version)
    else:
        with mlflow_run(step_name(domain), params, paths, inputs=[bundle], sections=(domain,)) as mrun:
            import mlflow

            tags = {"data_version": data_version, "git_commit": git_commit()}
            version, created = registry.register(domain, bundle, tags, description=_description(domain, manifest))
            mlflow.set_tags({"registered_model": registry.name, "registered_version": version.version})
            run_id = mrun.info.run_id
    result = {
        "name": registry.name,
        "version": int(version.version),
        "bundle_hash": registry.tag(version, BUNDLE_HASH_TAG),
        "bundle_sha256": registry.tag(version, BUNDLE_SHA256_TAG),
        "created": created,
        "run_id": run_id,
    }
    write_json(paths.registered(domain), result)
    return result


def _description(domain: str, manifest: dict) -> str:
    if domain == "recommend":
        return f"recommendation bundle as of {manifest.get('as_of')}"
    return f"search bundle over {manifest.get('n_products')} products"


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    if len(sys.argv) != 2 or sys.argv[1] not in DOMAINS:
        sys.exit(f"usage: python -m pipelines.register {'|'.join(DOMAINS)}")
    run(sys.argv[1], load_params(), Paths())

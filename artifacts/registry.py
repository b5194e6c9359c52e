"""The MLflow model registry: the one place that knows model names, aliases and version tags.

Each domain has one registered model; a version is one bundle (tagged with its content hash, so an
unchanged bundle is never registered twice). Aliases:
  challenger  the version that passed the gate (set by the gate, dropped when it is promoted or rejected)
  champion    the version that serves (moved by the rollout in one call: atomic for readers)
Tags on a version: bundle_hash, data_version, git_commit, gate_run_id (the gate run whose per-unit
results it passed with), rollout_status (champion | previous_champion | rejected), rollout_reason.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from artifacts.files import content_hash, read_json
from artifacts.paths import REPO_ROOT, Paths, tracking_uri
from components.rollout.state import ModelRef

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_NAMES = {"search": "hatchery-search", "recommend": "hatchery-recommend"}
BUNDLE_HASH_TAG = "bundle_hash"
GATE_RUN_TAG = "gate_run_id"
STATUS_TAG, REASON_TAG = "rollout_status", "rollout_reason"
# What loading a bundle imports, pinned from the installed versions into the registered model.
BUNDLE_PACKAGES = {
    "search": ("torch", "transformers", "onnxruntime", "faiss-cpu", "lightgbm", "numpy", "pandas", "pyarrow",
               "scipy", "safetensors", "pydantic"),
    "recommend": ("torch", "lightgbm", "numpy", "pandas", "pyarrow", "scipy", "safetensors", "pydantic"),
}  # fmt: skip
# The model's code: the pyfunc file, and the packages it imports (no pickled objects).
PYFUNC = REPO_ROOT / "artifacts" / "pyfunc.py"
CODE_PATHS = (REPO_ROOT / "components", REPO_ROOT / "artifacts")


def model_uri(name: str, version: str | int) -> str:
    return f"models:/{name}/{version}"


def pinned_requirements(domain: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in BUNDLE_PACKAGES[domain]:
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:  # a package this environment lacks is simply not pinned
            continue
    return out


class Registry:
    """One registered model (`name`) in the MLflow registry of `paths` (MLFLOW_TRACKING_URI wins)."""

    def __init__(self, name: str, paths: Paths | None = None) -> None:
        self.name = name
        self.paths = paths or Paths()
        self._client = None

    @classmethod
    def for_domain(cls, domain: str, paths: Paths | None = None) -> Registry:
        return cls(MODEL_NAMES[domain], paths)

    @property
    def client(self):
        if self._client is None:
            import mlflow
            from mlflow import MlflowClient

            uri = tracking_uri(self.paths)
            mlflow.set_tracking_uri(uri)
            self._client = MlflowClient(uri, registry_uri=uri)
        return self._client

    # --- reads ------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return bool(self.client.search_registered_models(filter_string=f"name = '{self.name}'"))

    def version(self, alias: str):
        """The ModelVersion an alias points at, or None (no such model or alias)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None

    def ref(self, alias: str) -> ModelRef | None:
        v = self.version(alias)
        return ModelRef(version=str(v.version), uri=model_uri(self.name, v.version)) if v else None

    def get(self, version: str | int):
        """The ModelVersion, or None when the registry does not have it (a reset store)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException:
            return None

    def by_bundle_hash(self, bundle_hash: str):
        """The newest version registered from a bundle with this content hash, or None."""
        if not self.exists():
            return None
        found = self.client.search_model_versions(f"name = '{self.name}' and tag.{BUNDLE_HASH_TAG} = '{bundle_hash}'")
        return max(found, key=lambda v: int(v.version)) if found else None

    def version_of_bundle(self, bundle: Path, record: Path | None = None):
        """The registered version of a bundle folder: the register step's record when its hash matches
        (and the registry still has it), else the version tagged with the bundle's hash; None if neither."""
        bundle_hash = content_hash(bundle)
        info = read_json(record) if record is not None else None
        if info and info.get("name") == self.name and info.get("bundle_hash") == bundle_hash:
            found = self.get(info["version"])
            if found is not None:
                return found
            log.warning("%s names %s v%s, which the registry does not have", record, self.name, info["version"])
        return self.by_bundle_hash(bundle_hash)

    def tag(self, version, key: str) -> str | None:
        return (version.tags or {}).get(key)

    def is_alias(self, alias: str, version: str | int) -> bool:
        current = self.version(alias)
        return current is not None and str(current.version) == str(version)

    def is_registered(self, ref: ModelRef | None) -> bool:
        """A ref into this registered model (a local bundle folder is not)."""
        return ref is not None and ref.uri.startswith(f"models:/{self.name}/")

    # --- writes -----------------------------------------------------------------------------------
    def register(self, domain: str, bundle: Path, tags: dict[str, str], description: str = "") -> tuple[Any, bool]:
        """(version, created): the bundle as a new version, or the existing version of the same bundle."""
        import mlflow

        bundle_hash = content_hash(bundle)
        existing = self.by_bundle_hash(bundle_hash)
        if existing is not None:
            log.info("bundle %s already registered as %s v%s", bundle_hash, self.name, existing.version)
            return existing, False
        info = mlflow.pyfunc.log_model(
            name=f"{domain}_bundle",
            python_model=str(PYFUNC),
            artifacts={"bundle": str(bundle)},
            code_paths=[str(p) for p in CODE_PATHS],
            pip_requirements=pinned_requirements(domain),
            registered_model_name=self.name,
        )
        version = str(info.registered_model_version)
        for key, value in {**tags, BUNDLE_HASH_TAG: bundle_hash}.items():
            self.client.set_model_version_tag(self.name, version, key, value)
        if description:
            self.client.update_model_version(self.name, version, description=description)
        log.info("registered %s v%s (bundle %s)", self.name, version, bundle_hash)
        return self.get(version), True

    def set_challenger(self, version: str | int, gate_run_id: str) -> None:
        """The gate's pass: the version remembers the gate run, then takes the `challenger` alias."""
        if self.is_alias(CHALLENGER, version):
            log.info("%s v%s already holds the %s alias: nothing to change", self.name, version, CHALLENGER)
            return
        self.client.set_model_version_tag(self.name, str(version), GATE_RUN_TAG, gate_run_id)
        self.client.set_registered_model_alias(self.name, CHALLENGER, str(version))
        log.info("%s v%s is now the %s", self.name, version, CHALLENGER)

    def promote(self, new: ModelRef, old: ModelRef | None, reason: str) -> None:
        """`new` becomes the champion (one alias move); `old` is marked previous. Local refs: no-op."""
        if not self.is_registered(new):
            return
        self.client.set_registered_model_alias(self.name, CHAMPION, new.version)
        self.client.set_model_version_tag(self.name, new.version, STATUS_TAG, "champion")
        self.client.set_model_version_tag(self.name, new.version, REASON_TAG, reason[:500])
        if self.is_registered(old):
            self.client.set_model_version_tag(self.name, old.version, STATUS_TAG, "previous_champion")
        self.drop_challenger(new.version)

    def reject(self, challenger: ModelRef, reason: str) -> None:
        """The challenger lost its rollout: tagged rejected with the reason, its alias dropped."""
        if not self.is_registered(challenger):
            return
        self.client.set_model_version_tag(self.name, challenger.version, STATUS_TAG, "rejected")
        self.client.set_model_version_tag(self.name, challenger.version, REASON_TAG, reason[:500])
        self.drop_challenger(challenger.version)

    def drop_challenger(self, version: str | int) -> None:
        if self.is_alias(CHALLENGER, version):
            self.client.delete_registered_model_alias(self.name, CHALLENGER)

    # --- artifacts --------------------------------------------------------------------------------
    def download_bundle(self, uri: str, cache: Path) -> Path:
        """The bundle folder of `models:/<name>/<version>`, downloaded once into `cache`/<name>/<version>."""
        name, _, version = uri.removeprefix("models:/").partition("/")
        target = Path(cache) / name / version
        found = sorted(target.rglob("manifest.json")) if target.exists() else []
        if not found:
            import mlflow

            mlflow.set_tracking_uri(tracking_uri(self.paths))
            tmp = target.with_name(f".{version}.{uuid.uuid4().hex[:8]}")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
            if not target.exists():  # a concurrent download may have won; either copy is the same version
                tmp.rename(target)
            found = sorted(target.rglob("manifest.json"))
            if not found:
                raise FileNotFoundError(f"{uri} has no bundle (no manifest.json among its artifacts)")
        # The pyfunc keeps the bundle as artifacts/bundle/; the shallowest manifest is the bundle's own.
        return min(found, key=lambda p: len(p.parts)).parent


def local_bundle(uri: str, paths: Paths) -> Path:
    """A local bundle folder for a ModelRef uri: a folder as it is, `models:/<name>/<version>` downloaded once."""
    if not uri.startswith("models:/"):
        path = Path(uri)
        if not (path / "manifest.json").exists():
            raise FileNotFoundError(f"no bundle at {path} (manifest.json missing)")
        return path
    name = uri.removeprefix("models:/").partition("/")[0]
    return Registry(name, paths).download_bundle(uri, paths.serving_cache)

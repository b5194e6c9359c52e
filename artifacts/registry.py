"""The MLflow model registry: the one place that knows model names, aliases and version tags.

Each domain has one registered model; a version is one bundle (tagged with its content hash, so an
unchanged bundle is never registered twice). Aliases:
  challenger  the version that passed the gate (set by the gate, dropped when it is promoted or rejected)
  champion    the version that serves (moved by the rollout in one call: atomic for readers)
Tags on a version: bundle_hash, data_version, git_commit, gate_run_id (the gate run whose per-unit
results it passed with), rollout_status (champion | previous_champion | rejected), rollout_reason.

Integrity (artifacts/integrity.py): a version also carries bundle_sha256, the digest of the sha256
manifest shipped beside its bundle; a downloaded bundle is checked against it before anything of it is
parsed (versions registered before manifests: against bundle_hash). The gate's pass is recorded as
gate_passed_bundle = that digest: `gated_challenger()` refuses a `challenger` alias without it (an
alias set by hand), and a rejection consumes it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from artifacts.files import content_hash, read_json
from artifacts.integrity import (
    MANIFEST_FILE,
    BundleIntegrityError,
    bundle_files,
    manifest_digest,
    verify_against_digest,
    write_manifest,
)
from artifacts.paths import REPO_ROOT, Paths, dev_mode, tracking_uri
from components.rollout.state import ModelRef

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_NAMES = {"search": "hatchery-search", "recommend": "hatchery-recommend"}
BUNDLE_HASH_TAG = "bundle_hash"
GATE_RUN_TAG = "gate_run_id"
BUNDLE_SHA256_TAG = "bundle_sha256"
GATE_PASS_TAG = "gate_passed_bundle"
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
        with tempfile.TemporaryDirectory() as tmp:
            # The manifest travels beside the bundle (artifacts/SHA256SUMS.json next to artifacts/bundle/).
            sums = Path(tmp) / MANIFEST_FILE
            digest = manifest_digest(write_manifest(bundle, sums))
            info = mlflow.pyfunc.log_model(
                name=f"{domain}_bundle",
                python_model=str(PYFUNC),
                artifacts={"bundle": str(bundle), "bundle_sha256": str(sums)},
                code_paths=[str(p) for p in CODE_PATHS],
                pip_requirements=pinned_requirements(domain),
                registered_model_name=self.name,
            )
        version = str(info.registered_model_version)
        for key, value in {**tags, BUNDLE_HASH_TAG: bundle_hash, BUNDLE_SHA256_TAG: digest}.items():
            self.client.set_model_version_tag(self.name, version, key, value)
        if description:
            self.client.update_model_version(self.name, version, description=description)
        log.info("registered %s v%s (bundle %s)", self.name, version, bundle_hash)
        return self.get(version), True

    def set_challenger(self, version: str | int, gate_run_id: str) -> None:
        """The gate's pass: the version remembers the gate run and the bundle digest it passed (the pass
        record `gated_challenger` asks for), then takes the `challenger` alias."""
        if self.is_alias(CHALLENGER, version) and self.gate_pass_problem(self.get(version)) is None:
            log.info("%s v%s already holds the %s alias: nothing to change", self.name, version, CHALLENGER)
            return
        digest = self.bundle_digest(self.get(version))
        if digest is None:
            raise BundleIntegrityError(
                f"{self.name} v{version} records no bundle digest: register it with pipelines/register.py "
                "(or Registry.record_bundle) before the gate can pass it"
            )
        self.client.set_model_version_tag(self.name, str(version), GATE_RUN_TAG, gate_run_id)
        self.client.set_model_version_tag(self.name, str(version), GATE_PASS_TAG, digest)
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
        self.drop_gate_pass(challenger.version)

    def apply(self, intent: dict[str, Any]) -> None:
        """Carry out a rollout's registry intent (components.rollout.intend); idempotent, so a crashed
        move is simply applied again on the next start.

        promote / restore: `champion` takes the champion alias, `previous` is marked previous;
        reject: `rejected` is tagged rejected and loses the challenger alias.
        """

        def ref(key: str) -> ModelRef | None:
            raw = intent.get(key)
            return ModelRef(**raw) if raw else None

        action, reason = intent["action"], str(intent.get("reason", ""))
        if action in ("promote", "restore"):
            self.promote(ref("champion"), ref("previous"), reason)
        elif action == "reject":
            self.reject(ref("rejected"), reason)
        else:
            raise ValueError(f"unknown registry intent {action!r}")

    def disagreement(self, champion: ModelRef | None) -> str | None:
        """Why the champion alias and a rollout state's champion differ, or None when they agree.

        A local bundle folder (tests, laptops) has no alias: nothing to compare.
        """
        if champion is not None and not self.is_registered(champion):
            return None
        have = self.version(CHAMPION)
        have_v = str(have.version) if have is not None else None
        want_v = champion.version if champion is not None else None
        return None if have_v == want_v else f"the {CHAMPION} alias is v{have_v}, the rollout state says v{want_v}"

    def drop_challenger(self, version: str | int) -> None:
        if self.is_alias(CHALLENGER, version):
            self.client.delete_registered_model_alias(self.name, CHALLENGER)

    # --- integrity and the gate's pass record ---------------------------------------------------------
    def record_bundle(self, version: str | int, bundle: Path) -> str:
        """Tag a version with the manifest digest of its bundle folder (register does this; tests that
        create versions by hand call it too); returns the digest."""
        digest = manifest_digest(bundle_files(bundle))
        self.client.set_model_version_tag(self.name, str(version), BUNDLE_SHA256_TAG, digest)
        return digest

    def bundle_digest(self, version) -> str | None:
        """What a version's bundle must match: its sha256 manifest digest, else (registered before
        manifests) its md5 content hash; None when it records neither."""
        if version is None:
            return None
        return self.tag(version, BUNDLE_SHA256_TAG) or self.tag(version, BUNDLE_HASH_TAG)

    def gate_pass_problem(self, version) -> str | None:
        """Why a version cannot be rolled out or packaged as the gate's challenger, or None when it carries
        the gate's pass record for its own bundle."""
        if version is None:
            return "no such version"
        digest, passed = self.bundle_digest(version), self.tag(version, GATE_PASS_TAG)
        if digest is None:
            return f"{self.name} v{version.version} records no bundle digest (not registered by pipelines/register.py)"
        if passed != digest:
            why = "no gate pass" if not passed else "a gate pass for a different bundle"
            return (
                f"{self.name} v{version.version} holds the `{CHALLENGER}` alias but has {why} for its bundle: "
                "set by hand? run the gate"
            )
        return None

    def gated_challenger(self) -> ModelRef | None:
        """The `challenger` alias's version as a ModelRef, only if the gate passed this very bundle; None
        without the alias. Raises BundleIntegrityError for an alias without the pass record."""
        v = self.version(CHALLENGER)
        if v is None:
            return None
        problem = self.gate_pass_problem(v)
        if problem is not None:
            raise BundleIntegrityError(problem)
        return ModelRef(version=str(v.version), uri=model_uri(self.name, v.version))

    def drop_gate_pass(self, version: str | int) -> None:
        """A rejected rollout consumes the pass: the same version needs the gate again to be a challenger."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_model_version_tag(self.name, str(version), GATE_PASS_TAG)
        except MlflowException:  # no pass recorded: nothing to drop
            pass

    def verify_download(self, version, bundle: Path) -> None:
        """Check a downloaded bundle against what the registry recorded for `version`, before any of it is
        parsed. Raises BundleIntegrityError; a version recording no digest is refused outside dev mode."""
        sha = self.tag(version, BUNDLE_SHA256_TAG)
        if sha:
            verify_against_digest(bundle, sha, bundle.parent / MANIFEST_FILE)
            return
        legacy = self.tag(version, BUNDLE_HASH_TAG)
        if legacy:
            if content_hash(bundle) != legacy:
                raise BundleIntegrityError(f"{bundle} differs from {self.name} v{version.version}'s bundle_hash")
            log.warning(
                "%s v%s checked by its md5 bundle_hash only (registered before sha256 manifests)",
                self.name,
                version.version,
            )
            return
        if dev_mode():
            log.warning("%s v%s records no bundle digest: loaded UNVERIFIED (dev mode)", self.name, version.version)
            return
        raise BundleIntegrityError(
            f"{self.name} v{version.version} records no bundle digest (not registered by pipelines/register.py): "
            "refused (HATCHERY_ENV=dev loads it unverified)"
        )

    # --- artifacts --------------------------------------------------------------------------------
    def download_bundle(self, uri: str, cache: Path) -> Path:
        """The bundle folder of `models:/<name>/<version>`, downloaded once into `cache`/<name>/<version>.

        Checked against the version's recorded digest every time it is handed out (verify_download),
        before anything of it is parsed: a download that fails is deleted and refused
        (BundleIntegrityError); a cached copy that fails is set aside and downloaded again.
        """
        name, _, version = uri.removeprefix("models:/").partition("/")
        target = Path(cache) / name / version
        registered = self.get(version)
        if registered is None:
            raise FileNotFoundError(f"{uri}: the registry has no such version")
        bundle = _bundle_in(target)
        if bundle is not None:
            try:
                self.verify_download(registered, bundle)
                return bundle
            except BundleIntegrityError as exc:
                log.error("cached %s fails its integrity check (%s): downloading it again", uri, exc)
                aside = target.with_name(f".{version}.{uuid.uuid4().hex[:8]}")
                target.rename(aside)  # a leftover the start-up sweep removes (artifacts.files.sweep_stale)
                shutil.rmtree(aside, ignore_errors=True)
        import mlflow

        mlflow.set_tracking_uri(tracking_uri(self.paths))
        tmp = target.with_name(f".{version}.{uuid.uuid4().hex[:8]}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
            fresh = _bundle_in(tmp)
            if fresh is None:
                raise FileNotFoundError(f"{uri} has no bundle (no manifest.json among its artifacts)")
            self.verify_download(registered, fresh)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if not target.exists():  # a concurrent download may have won; either copy is the same version
            tmp.rename(target)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        return _bundle_in(target)


def _bundle_in(folder: Path) -> Path | None:
    """The bundle folder inside a downloaded model: the pyfunc keeps it as artifacts/bundle/, and the
    shallowest manifest.json is the bundle's own. None when there is none."""
    found = sorted(Path(folder).rglob("manifest.json")) if Path(folder).exists() else []
    return min(found, key=lambda p: len(p.parts)).parent if found else None


def local_bundle(uri: str, paths: Paths) -> Path:
    """A local bundle folder for a ModelRef uri: a folder as it is, `models:/<name>/<version>` downloaded once."""
    if not uri.startswith("models:/"):
        path = Path(uri)
        if not (path / "manifest.json").exists():
            raise FileNotFoundError(f"no bundle at {path} (manifest.json missing)")
        return path
    name = uri.removeprefix("models:/").partition("/")[0]
    return Registry(name, paths).download_bundle(uri, paths.serving_cache)

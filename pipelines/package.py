"""package: build the validated challenger into a Bento, ready for the rollout.

`bentoml build -f services/bentofile.yaml` from the repository root, with the model to pack passed as
Bento arguments (model_uri=models:/<name>@challenger, bundle_dir=<bundle>) and HATCHERY_MODEL_URI in
the env. The Bento version is <domain>-v<model version>-<code hash>, so a re-run with nothing changed
builds nothing; .bentoignore keeps outputs and BENTOML_HOME out of the build context. Only a version
holding the `challenger` alias AND the gate's pass record for its own bundle is packaged
(Registry.gated_challenger): an alias set by hand is refused.

Bentos go to BENTOML_HOME (default <HATCHERY_HOME>/bentoml_home). Output: reports/package/<domain>.json.

Usage: python -m pipelines.package <charter name>
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from artifacts.files import write_json
from artifacts.integrity import BundleIntegrityError
from artifacts.paths import REPO_ROOT, Paths
from artifacts.registry import CHALLENGER, CHAMPION, Registry
from components.charter import Charter

log = logging.getLogger(__name__)

STEP = "package"


class PackagingError(RuntimeError):
    """Nothing to build with, or the build failed; the message says which and why."""


BENTOFILE = REPO_ROOT / "services" / "bentofile.yaml"
# What the Bento packs (services/bentofile.yaml `include`): a change to any of it is a new Bento.
PACKED = ("services", "artifacts", "components")


def code_hash(bentofile: Path = BENTOFILE) -> str:
    """8 hex digits over the bentofile and the Python sources it packs."""
    digest = hashlib.md5(bentofile.read_bytes())
    for folder in PACKED:
        for f in sorted((REPO_ROOT / folder).rglob("*.py")):
            digest.update(str(f.relative_to(REPO_ROOT)).encode() + f.read_bytes())
    return digest.hexdigest()[:8]


def run(charter: Charter, paths: Paths, bundle_dir: Path | None = None) -> dict[str, Any]:
    """Build the Bento of `<registered_model>@challenger`; return {"bento": tag, ...}."""
    registry = Registry(charter.registered_model, paths)
    try:
        version = registry.gated_challenger()
    except BundleIntegrityError as exc:
        raise PackagingError(str(exc)) from None
    current = registry.version_of_bundle(paths.bundle(charter.domain), paths.registered(charter.domain))
    serving = registry.version(CHAMPION)
    if version is None and current is not None and serving is not None and str(serving.version) == str(current.version):
        # A re-run on unchanged data and code: this version was packaged when it passed the gate.
        return {"bento": None, "version": str(current.version), "reason": "already the champion: nothing to package"}
    if version is None:
        raise PackagingError(
            f"{charter.registered_model} has no `{CHALLENGER}` alias: only a challenger that passed the gate is"
            " packaged"
        )
    model_uri = f"models:/{charter.registered_model}@{CHALLENGER}"
    bundle = Path(bundle_dir or paths.bundle(charter.domain))
    env = os.environ.copy()
    env.setdefault("BENTOML_HOME", str(paths.bentoml_home))
    env["HATCHERY_MODEL_URI"] = model_uri
    env["HATCHERY_BUNDLE_DIR"] = str(bundle)

    bentoml = str(Path(sys.executable).parent / "bentoml")
    # Same model version + same code = same Bento version: a re-run finds it and builds nothing.
    bento_version = f"{charter.domain}-v{version.version}-{code_hash(BENTOFILE)}"
    name = (yaml.safe_load(BENTOFILE.read_text()) or {}).get("name", "hatchery")
    found = subprocess.run([bentoml, "get", f"{name}:{bento_version}"], env=env, capture_output=True, text=True)
    if found.returncode == 0:
        log.info("Bento %s:%s exists already: nothing to build", name, bento_version)
        result = {"bento": f"{name}:{bento_version}", "model_uri": model_uri, "version": version.version,
                  "bentoml_home": env["BENTOML_HOME"], "built": False}  # fmt: skip
        write_json(paths.package_report(charter.domain), result)
        return result
    cmd = [
        bentoml,
        "build",
        "-f",
        str(BENTOFILE),
        "-o",
        "tag",
        "--version",
        bento_version,
        "--arg",
        f"model_uri={model_uri}",
        "--arg",
        f"bundle_dir={bundle}",
        "--label",
        f"version={version.version}",
        "--label",
        f"charter={charter.name}",
        str(REPO_ROOT),
    ]
    log.info("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    log.info("%s", proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise PackagingError(f"`bentoml build` failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    tag = next(
        (ln.split("__tag__:", 1)[1].strip() for ln in proc.stdout.splitlines() if "__tag__:" in ln),
        proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
    )
    result = {"bento": tag, "model_uri": model_uri, "version": version.version, "bentoml_home": env["BENTOML_HOME"],
              "built": True}  # fmt: skip
    write_json(paths.package_report(charter.domain), result)
    log.info("built Bento %s from %s v%s", tag, charter.registered_model, version.version)
    return result


if __name__ == "__main__":
    from pipelines.common import configure_logging
    from pipelines.requirements import load_charter

    configure_logging()
    run(load_charter(sys.argv[1]), Paths())

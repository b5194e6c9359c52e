"""package: build the validated challenger into a Bento, ready for the serving stage's rollout.

The service itself belongs to the serving stage. This step finds it and builds it:
  1. services/build.py with `build_bento(domain: str, model_uri: str, bundle_dir: Path) -> str` — when the
     serving stage provides that function, it is called and returns the Bento tag; else
  2. services/<domain>/bentofile.yaml (or services/bentofile.yaml) — `bentoml build -f <bentofile>`
     from the repository root, with the model to pack passed as Bento arguments
     (model_uri=models:/<name>@challenger, bundle_dir=<bundle>) and HATCHERY_MODEL_URI in the env; the Bento
     version is <domain>-v<model version>-<code hash>, so a re-run with nothing changed builds nothing.
     .bentoignore keeps outputs and BENTOML_HOME out of the build context.
Without either it fails with a message saying what is missing; the challenger stays validated.

Bentos go to BENTOML_HOME (default <HATCHERY_HOME>/bentoml_home). Output: reports/package/<domain>.json.

Usage: python -m pipelines.package <charter name>
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from components.charter import Charter
from pipelines.common import REPO_ROOT, Paths, write_json

log = logging.getLogger(__name__)

STEP = "package"


class PackagingError(RuntimeError):
    """Nothing to build with, or the build failed; the message says which and why."""


def bentofile_for(domain: str, services: Path = REPO_ROOT / "services") -> Path | None:
    for candidate in (services / domain / "bentofile.yaml", services / "bentofile.yaml"):
        if candidate.exists():
            return candidate
    return None


def code_hash(bentofile: Path) -> str:
    """8 hex digits over the bentofile and the Python sources it packs (services, components, pipelines)."""
    digest = hashlib.md5(bentofile.read_bytes())
    for folder in ("services", "components", "pipelines"):
        for f in sorted((REPO_ROOT / folder).glob("*.py")):
            digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:8]


def _builder():
    """services.build.build_bento when the serving stage provides it, else None."""
    if not (REPO_ROOT / "services" / "build.py").exists():
        return None
    module = importlib.import_module("services.build")
    return getattr(module, "build_bento", None)


def run(charter: Charter, paths: Paths, bundle_dir: Path | None = None) -> dict[str, Any]:
    """Build the Bento of `<registered_model>@challenger`; return {"bento": tag, ...}."""
    from pipelines.gate import CHALLENGER, CHAMPION, DOMAINS, _client, alias_version, registered_version

    client = _client(paths)
    version = alias_version(client, charter.registered_model, CHALLENGER)
    current = registered_version(client, charter.registered_model, paths.root, charter.domain)
    serving = alias_version(client, charter.registered_model, CHAMPION)
    if version is None and current is not None and serving is not None and str(serving.version) == str(current.version):
        # A re-run on unchanged data and code: this version was packaged when it passed the gate.
        return {"bento": None, "version": str(current.version), "reason": "already the champion: nothing to package"}
    if version is None:
        raise PackagingError(
            f"{charter.registered_model} has no `{CHALLENGER}` alias: only a challenger that passed the gate is"
            " packaged"
        )
    model_uri = f"models:/{charter.registered_model}@{CHALLENGER}"
    bundle = Path(bundle_dir or paths.root / DOMAINS[charter.domain].bundle)
    env = os.environ.copy()
    env.setdefault("BENTOML_HOME", str(paths.root / "bentoml_home"))
    env["HATCHERY_MODEL_URI"] = model_uri
    env["HATCHERY_BUNDLE_DIR"] = str(bundle)

    build = _builder()
    bentofile = bentofile_for(charter.domain)
    if build is not None:
        log.info("building with services.build.build_bento(%s, %s)", charter.domain, model_uri)
        os.environ.setdefault("BENTOML_HOME", env["BENTOML_HOME"])
        tag = str(build(charter.domain, model_uri, bundle))
    elif bentofile is not None:
        bentoml = str(Path(sys.executable).parent / "bentoml")
        # Same model version + same code = same Bento version: a re-run finds it and builds nothing.
        bento_version = f"{charter.domain}-v{version.version}-{code_hash(bentofile)}"
        name = (yaml.safe_load(bentofile.read_text()) or {}).get("name", "hatchery")
        found = subprocess.run([bentoml, "get", f"{name}:{bento_version}"], env=env, capture_output=True, text=True)
        if found.returncode == 0:
            log.info("Bento %s:%s exists already: nothing to build", name, bento_version)
            result = {"bento": f"{name}:{bento_version}", "model_uri": model_uri, "version": version.version,
                      "bentoml_home": env["BENTOML_HOME"], "built": False}  # fmt: skip
            write_json(paths.reports / "package" / f"{charter.domain}.json", result)
            return result
        cmd = [
            bentoml,
            "build",
            "-f",
            str(bentofile),
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
            raise PackagingError(
                f"`bentoml build` failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
        tag = next(
            (ln.split("__tag__:", 1)[1].strip() for ln in proc.stdout.splitlines() if "__tag__:" in ln),
            proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
        )
    else:
        raise PackagingError(
            f"no BentoML service for {charter.domain!r} yet: expected services/build.py (build_bento) or "
            f"services/{charter.domain}/bentofile.yaml — the serving stage provides it. "
            f"{charter.registered_model} v{version.version} passed the gate and waits under the `{CHALLENGER}` alias."
        )
    result = {"bento": tag, "model_uri": model_uri, "version": version.version, "bentoml_home": env["BENTOML_HOME"],
              "built": True}  # fmt: skip
    write_json(paths.reports / "package" / f"{charter.domain}.json", result)
    log.info("built Bento %s from %s v%s", tag, charter.registered_model, version.version)
    return result


if __name__ == "__main__":
    from pipelines.common import configure_logging
    from pipelines.requirements import load_charter

    configure_logging()
    run(load_charter(sys.argv[1]), Paths())

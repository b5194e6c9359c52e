"""Bundle integrity: a sha256 manifest of every file, written at registration and checked before loading.

The manifest (`SHA256SUMS.json`: {relative posix path: sha256 hex}) is written BESIDE the bundle folder,
never inside it: the bundle is a training step's DVC output, and its content hash (the registry's
dedup key, artifacts/files.content_hash) must not change when it is registered. The registered model
carries the manifest next to its `bundle/` artifact, and the version is tagged with the manifest's
digest (one sha256 over the canonical manifest), so a downloaded bundle is checked file by file
against a manifest that is itself checked against the registry.

Standard library only: nothing of a bundle is parsed before it is verified.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_FILE = "SHA256SUMS.json"
_CHUNK = 1 << 20


class BundleIntegrityError(RuntimeError):
    """A bundle differs from what was registered (a changed, missing or extra file, or a forged manifest)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_files(bundle: Path) -> dict[str, str]:
    """{relative posix path: sha256} of every file under `bundle`, sorted by path; symlinks are refused
    (a link could point anywhere, and the check would vouch for whatever it points at)."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleIntegrityError(f"{bundle} is not a bundle folder")
    out = {}
    for p in sorted(bundle.rglob("*")):
        if p.is_symlink():
            raise BundleIntegrityError(f"{bundle}: {p.relative_to(bundle).as_posix()} is a symbolic link")
        if p.is_file():
            out[p.relative_to(bundle).as_posix()] = sha256_file(p)
    return out


def manifest_digest(manifest: dict[str, str]) -> str:
    """One sha256 over the canonical manifest (sorted keys, no whitespace): what the registry records."""
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def write_manifest(bundle: Path, out: Path | None = None) -> dict[str, str]:
    """Hash every file of `bundle` and write the manifest to `out` (default: beside the bundle,
    <bundle>/../SHA256SUMS.json); returns the manifest."""
    bundle = Path(bundle)
    manifest = bundle_files(bundle)
    out = Path(out) if out is not None else bundle.parent / MANIFEST_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def read_manifest_file(path: Path) -> dict[str, str]:
    """A manifest file, checked to be a flat {str: 64-hex str} map."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BundleIntegrityError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in manifest.items()
    ):
        raise BundleIntegrityError(f"{path}: not a sha256 manifest")
    return manifest


def verify_bundle(bundle: Path, expected: dict[str, str]) -> None:
    """Raise BundleIntegrityError naming the first file (in path order) that differs from `expected`:
    changed, missing or extra. Reads bytes only: call it before anything of the bundle is parsed."""
    bundle = Path(bundle)
    actual = bundle_files(bundle)
    for rel in sorted(set(expected) | set(actual)):
        if rel not in actual:
            raise BundleIntegrityError(f"{bundle}: {rel} is missing (the registered bundle has it)")
        if rel not in expected:
            raise BundleIntegrityError(f"{bundle}: {rel} is not in the registered bundle (an extra file)")
        if actual[rel] != expected[rel]:
            raise BundleIntegrityError(
                f"{bundle}: {rel} differs from the registered bundle (sha256 {actual[rel][:12]}…, registered "
                f"{expected[rel][:12]}…)"
            )


def verify_against_digest(bundle: Path, digest: str, manifest_file: Path | None = None) -> None:
    """Check `bundle` against the registry's manifest digest.

    With the shipped manifest: the manifest must hash to `digest`, then every file must match it (the
    error names the file). Without one: the bundle's own manifest must hash to `digest`.
    """
    if manifest_file is not None and Path(manifest_file).exists():
        manifest = read_manifest_file(manifest_file)
        if manifest_digest(manifest) != digest:
            raise BundleIntegrityError(
                f"{manifest_file} does not hash to the registered digest {digest[:12]}… (a changed manifest)"
            )
        verify_bundle(bundle, manifest)
        return
    actual = manifest_digest(bundle_files(bundle))
    if actual != digest:
        raise BundleIntegrityError(
            f"{bundle} differs from the registered bundle (manifest digest {actual[:12]}…, registered {digest[:12]}…)"
        )

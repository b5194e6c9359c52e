"""load_bundle(domain, folder): the one way training, evaluation, the gate, the benchmarks and the
service turn a bundle folder into a model (artifacts/search_bundle.py, artifacts/recommend_bundle.py
hold the formats)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from artifacts.paths import DOMAINS


def read_manifest(folder: Path | str) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no bundle at {folder} (manifest.json missing)")
    return json.loads(path.read_text())


def bundle_domain(folder: Path | str) -> str:
    """Which domain a bundle folder serves, from its manifest's format stamp."""
    from artifacts import recommend_bundle

    manifest = read_manifest(folder)
    if manifest.get("format") == recommend_bundle.FORMAT:
        return "recommend"
    if "format_version" in manifest:
        return "search"
    raise ValueError(f"{folder}: manifest.json names no known bundle format")


def load_bundle(domain: str, folder: Path | str, **kw: Any):
    """A ready SearchModel or RecommendModel from a bundle folder (kw: the format's own options,
    e.g. device="cpu" or onnx=False for search)."""
    if domain == "search":
        from artifacts.search_bundle import load_search_bundle

        return load_search_bundle(folder, **kw)
    if domain == "recommend":
        from artifacts.recommend_bundle import load_recommend_bundle

        return load_recommend_bundle(folder, **kw)
    raise ValueError(f"unknown domain {domain!r}: expected one of {DOMAINS}")


def catalog_ids(domain: str, model) -> list[str]:
    """The ids a loaded model can return (the catalog an exposure measure counts over)."""
    ids = model.product_ids if domain == "search" else model.state.items
    return [str(p) for p in ids]


def top_ids(domain: str, model, request: Any, k: int) -> list[str]:
    """One request's top-k product ids: a query for search, a (pseudonymised) user id for recommend."""
    if domain == "search":
        return [str(r["product_id"]) for r in model.search(str(request), k=k)]
    return [str(r["product_id"]) for r in model.recommend(str(request), k=k)]

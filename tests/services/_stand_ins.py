"""Stand-in models and in-process app helpers for the service tests (imported explicitly, not a conftest).

A stand-in answers every endpoint with product ids that name its bundle's version, so a test can
tell which model answered without training one; the real bundles' answers are test_service.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

from components import rollout as ro


class StandIn:
    """search / recommend / similar like the real models; a product id not starting with "p" is unknown."""

    def __init__(self, version: str) -> None:
        self.version = version

    def clean_query(self, query: str) -> str:
        return ""  # routes services.runtime.search_results to .search, which needs no query tower

    def search(self, query: str, k: int = 10, explain: bool = False) -> list[dict]:
        return [{"product_id": f"{self.version}-{i}", "title": query, "score": 1.0 - i / 100} for i in range(k)]

    def recommend(self, user_id: str, k: int = 20, exclude_purchased: bool = False) -> list[dict]:
        return [{"product_id": f"{self.version}-{i}", "score": 1.0, "source": "popular"} for i in range(k)]

    def similar(self, product_id: str, k: int = 10) -> list[dict]:
        if not product_id.startswith("p"):
            raise KeyError(f"unknown product_id {product_id!r}")
        return [{"product_id": f"{self.version}-{i}", "score": 1.0} for i in range(k)]


def stand_in_loader(domain: str, folder) -> StandIn:
    """A loader for DomainRuntime / services.runtime.load_bundle: the stand-in of a make_bundle folder."""
    return StandIn(json.loads((Path(folder) / "manifest.json").read_text())["version"])


def make_bundle(root: Path, version: str) -> ro.ModelRef:
    """A bundle folder for stand_in_loader, and its ref."""
    folder = Path(root) / f"bundle{version}"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"version": version}))
    return ro.ModelRef(version=version, uri=str(folder))


def forget_bentoml_metrics() -> None:
    """Free BentoML's metric names before another in-process app's first request.

    Each app's HTTP middleware registers bentoml_* collectors by name in the process-wide registry
    on its first request, so a second Hatchery.to_asgi() in one test process would fail with
    DuplicateTimeseries. Apps already serving keep their (now unexported) collectors.
    """
    import prometheus_client as pc

    names = pc.REGISTRY._names_to_collectors  # no public lookup by name
    for collector in {c for name, c in list(names.items()) if name.startswith("bentoml_")}:
        pc.REGISTRY.unregister(collector)

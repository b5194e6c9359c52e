"""A rollout world without BentoML or trained models: the real DomainRuntime (routing, logging, interleaving)
over a tiny fake search model, behind the two calls the rollout driver makes (/rollout_status, /search).

A fake model ranks a fixed catalog per query: "good" puts the query's judged products first, "bad"
last. Its bundle is a folder with a manifest naming the quality; versions are registered in the
test's MLflow store (source = that folder), as tests/services/test_service.py does with real bundles.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from artifacts.paths import Paths
from components import schema as s

NAME = "hatchery-search"
N_PRODUCTS, N_QUERIES, RELEVANT = 60, 20, 3


def judgments() -> pd.DataFrame:
    """RELEVANT judged products (relevance 3, the top grade) per query q<i>: products p<3i>..p<3i+2>."""
    rows = [
        {s.QUERY_ID: f"q{i}", s.QUERY: f"query {i}", s.PRODUCT_ID: f"p{RELEVANT * i + j}", s.RELEVANCE: 3.0}
        for i in range(N_QUERIES)
        for j in range(RELEVANT)
    ]
    return pd.DataFrame(rows)


class FakeSearch:
    """What services.runtime.search_results needs of a SearchModel, ranking by a fixed rule."""

    def __init__(self, quality: str) -> None:
        self.quality = quality
        self.product_ids = np.array([f"p{i}" for i in range(N_PRODUCTS)])
        self.titles = [f"product {i}" for i in range(N_PRODUCTS)]

    @staticmethod
    def clean_query(query: str) -> str:
        return str(query or "").strip()

    def encode_queries(self, queries) -> np.ndarray:
        return np.zeros((len(queries), 2), dtype=np.float32)

    def rank_queries(self, queries, k: int = 100, q_embs=None):
        out = []
        for q in queries:
            i = int(q.split()[-1])
            judged = [RELEVANT * i + j for j in range(RELEVANT)]
            rest = [p for p in range(N_PRODUCTS) if p not in judged]
            order = (judged + rest) if self.quality == "good" else (rest + judged)
            out.append((np.array(order[:k]), np.linspace(1.0, 0.0, min(k, N_PRODUCTS))))
        return out

    def search(self, query: str, k: int = 10, explain: bool = False) -> list[dict]:
        idx, sc = self.rank_queries([query], k)[0]
        return [
            {"product_id": str(self.product_ids[c]), "title": "", "score": float(v)}
            for c, v in zip(idx, sc, strict=True)
        ]


def load_fake(domain: str, bundle: Path) -> FakeSearch:
    return FakeSearch(json.loads((Path(bundle) / "manifest.json").read_text())["quality"])


def register(paths: Paths, quality: str, alias: str | None = None) -> str:
    """A new registry version of a fake bundle of `quality`; optionally aliased."""
    from mlflow import MlflowClient

    from artifacts.paths import tracking_uri
    from artifacts.registry import Registry

    uri = tracking_uri(paths)
    client = MlflowClient(uri, registry_uri=uri)
    if not client.search_registered_models(filter_string=f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    n = len(client.search_model_versions(f"name = '{NAME}'"))
    folder = paths.root / "fake_bundles" / f"{quality}{n}"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"quality": quality}))
    version = str(client.create_model_version(NAME, source=str(folder)).version)
    registry = Registry(NAME, paths)
    registry.record_bundle(version, folder)  # the digest pipelines/register.py records
    if alias == "challenger":
        registry.set_challenger(version, "test-gate")  # the alias with the gate's pass record
    elif alias:
        client.set_registered_model_alias(NAME, alias, version)
    return version


class _Response:
    def __init__(self, status: int, body: dict) -> None:
        self.status_code, self._body = status, body

    def json(self) -> dict:
        return self._body


class MiniService:
    """An httpx-like client whose /search and /rollout_status are a real DomainRuntime's (search only).

    on_request(n): called before the n-th /search request (1-based), e.g. to act as an operator mid-batch.
    """

    base_url = "http://mini"

    def __init__(self, paths: Paths, on_request: Callable[[int], None] | None = None) -> None:
        from services.runtime import DomainRuntime

        self.runtime = DomainRuntime("search", paths, loader=load_fake)
        self.runtime.start()
        self.on_request = on_request
        self.searches = 0

    def post(self, url: str, json: dict | None = None, timeout: float | None = None) -> _Response:
        from services.runtime import search_results

        path = url.removeprefix(self.base_url)
        rt = self.runtime
        if path == "/rollout_status":
            rt.poll_state(force=True)
            return _Response(
                200,
                {
                    "search": {
                        "state": rt.state.public_dict() if rt.state else None,
                        "challenger": rt.challenger.ref.version if rt.challenger else None,
                    }
                },
            )
        if path != "/search":
            return _Response(404, {"error": path})
        self.searches += 1
        if self.on_request is not None:
            self.on_request(self.searches)
        body = json or {}
        result = rt.call(
            "search",
            body.get("session_id"),
            lambda m: search_results(m.model, m.cache, body["query"], body.get("k", 10)),
            lambda results: [r["product_id"] for r in results],
        )
        return _Response(200, result)

    def close(self) -> None:
        self.runtime.close()

"""The search steps end to end on a tiny real slice (300 products, 60 queries, a few training steps)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.common import load_params
from tests.pipelines._search_slice import write_search_slice

pytestmark = pytest.mark.slow

OVERRIDES = {
    "search.profiles.cpu.epochs": 3,
    "search.profiles.cpu.max_steps": 6,
    "search.profiles.cpu.batch_size": 8,
    "search.profiles.cpu.random_negatives": 64,
    "search.profiles.cpu.checkpoint_every": 3,
    "search.ann.exact_below": 100,  # 300 products -> the HNSW path
    "search.ann.recall_probe_queries": 10,
    "search.ranker.n_estimators": 20,
    "search.ranker.min_data_in_leaf": 5,
    "search.ranker.early_stopping_rounds": 5,
    "search.bootstrap_resamples": 50,
}


@pytest.fixture(scope="module")
def trained(homedepot_raw, tmp_path_factory):
    """Run every search step once into one tmp root (module scope: the steps build on each other)."""
    import os

    from artifacts.paths import Paths
    from pipelines import build_index, embed_catalog, evaluate_search, train_encoder, train_ranker

    root = tmp_path_factory.mktemp("search")
    old = {k: os.environ.get(k) for k in ("HATCHERY_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["HATCHERY_HOME"] = str(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    paths = Paths(root=root)
    params = load_params(overrides=OVERRIDES)
    write_search_slice(homedepot_raw, paths)
    out = {"paths": paths, "params": params}
    out["embed"] = embed_catalog.run(params, paths)
    out["embed_again"] = embed_catalog.run(params, paths)
    out["encoder"] = train_encoder.run(params, paths, progress=False)
    out["index"] = build_index.run(params, paths)
    out["ranker"] = train_ranker.run(params, paths)
    out["report"] = evaluate_search.run(params, paths)
    yield out
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_embed_catalog_is_cached_for_the_same_model_and_text(trained) -> None:
    paths = trained["paths"]
    emb = np.load(paths.models / "search" / "embeddings" / "embeddings.npy")
    n = len(pd.read_parquet(paths.validated / "search" / "catalog.parquet"))
    assert emb.shape == (n, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert trained["embed_again"] == trained["embed"]  # second call read meta.json, no new pass


def test_encoder_step_writes_hf_tower_and_catalog_embeddings(trained) -> None:
    enc = trained["paths"].models / "search" / "encoder"
    assert (enc / "query_encoder" / "model.safetensors").exists()
    assert (enc / "product_adapter.safetensors").exists()
    assert trained["encoder"]["steps"] == 6
    assert not (trained["paths"].models / "search" / "checkpoints").exists()  # removed after success


def test_index_is_hnsw_above_threshold_with_measured_recall(trained) -> None:
    assert trained["index"]["kind"] == "hnsw"
    assert 0.5 <= trained["index"]["ann_recall_at_100"] <= 1.0


def test_metrics_file_has_every_model_with_intervals(trained) -> None:
    report = json.loads((trained["paths"].metrics / "search.json").read_text())
    assert report["primary"] == "hybrid_ranker"
    assert {"random", "bm25", "zero_shot", "fine_tuned", "content_ranker", "hybrid_ranker"} <= set(report["models"])
    for name, m in report["models"].items():
        lo, hi = m["rerank_ndcg_at_10_ci"]
        assert lo <= m["rerank_ndcg_at_10"] <= hi, name
        if name != "random":
            assert 0.0 <= m["ndcg_at_10"] <= 1.0 and 0.0 <= m["recall_at_100"] <= 1.0
            assert m["ndcg_at_10_ci"][0] <= m["ndcg_at_10"] <= m["ndcg_at_10_ci"][1]
    per_query = pd.read_parquet(trained["paths"].models / "search" / "eval" / "per_query.parquet")
    assert len(per_query) == report["test_queries"] == 10
    assert {
        "query_id",
        "query",
        "query_length",
        "head_tail",
        "judged_pool",
        "bm25__ndcg_at_10",
        "hybrid_ranker__recall_at_100",
    } <= set(per_query)
    assert (trained["paths"].models / "search" / "plots" / "metrics_by_model.png").stat().st_size > 1000


def test_content_ranker_side_by_side_with_groups_slice_and_gate_row(trained) -> None:
    from components.search_features import JUDGMENT_FEATURES
    from pipelines.gate import alongside

    paths = trained["paths"]
    report = json.loads((paths.metrics / "search.json").read_text())
    assert report["reported_alongside"] == ["content_ranker"]
    assert report["feature_groups"]["content_ranker"] == ["content"]
    assert {"content", "judgment_priors"} <= set(report["feature_groups"]["hybrid_ranker"])
    content = json.loads((paths.models / "search" / "content_ranker" / "meta.json").read_text())
    assert content["enabled"] and not JUDGMENT_FEATURES & set(content["feature_names"])
    assert {f["group"] for f in content["features"].values()} == {"content"}
    meta = trained["ranker"]
    assert meta["features"]["prior_count"]["group"] == "judgment_priors"
    assert meta["content_ranker"]["feature_groups"] == ["content"]
    per_query = pd.read_parquet(paths.models / "search" / "eval" / "per_query.parquet")
    assert set(per_query["judged_pool"]) <= {"judged", "never_judged", "none"}
    assert "content_ranker__ndcg_at_10" in per_query
    slices = json.loads((paths.models / "search" / "eval" / "slices.json").read_text())
    assert sum(row["queries"] for row in slices["judged_pool"].values()) == len(per_query)
    rows = alongside(report, "ndcg_at_10")
    assert [(r["model"], r["role"]) for r in rows] == [("hybrid_ranker", "primary"), ("content_ranker", "alongside")]
    assert rows[1]["value"] == report["models"]["content_ranker"]["ndcg_at_10"]
    from artifacts.reports import render

    html = render(
        "gate.html",
        report={
            "charter": "c",
            "domain": "search",
            "passed": True,
            "reason": "r",
            "context": {},
            "checks": [],
            "alongside": rows,
        },
    )
    assert "<td>content_ranker</td><td>alongside</td>" in html


def test_bundle_loads_and_answers_with_explanations(trained) -> None:
    from artifacts.search_bundle import load_search_bundle

    model = load_search_bundle(trained["paths"].models / "search" / "bundle")
    results = model.search("cordless drill", k=5, explain=True)
    assert 1 <= len(results) <= 5
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert all(len(r["contributions"]) == 5 for r in results)
    assert model.search("", k=5) == []


def test_register_is_idempotent(trained) -> None:
    from pipelines import register

    first = register.run("search", trained["params"], trained["paths"])
    again = register.run("search", trained["params"], trained["paths"])
    assert first["created"] and not again["created"]
    assert again["version"] == first["version"] == 1
    assert json.loads((trained["paths"].models / "search" / "registered.json").read_text())["version"] == 1


def test_the_encoder_bench_reproduces_the_pipelines_encoder(trained) -> None:
    from bench.search_encoder import ValidQueries, encoder_ndcg
    from components.config import ParamsError
    from components.encoder import load_encoder

    paths, params = trained["paths"], trained["params"]
    out = encoder_ndcg(params, paths, [{}, {"max_queries": 5}])
    # Same data, settings and seed as train_encoder: the same encoder, the same valid numbers.
    enc = paths.models / "search" / "encoder"
    model, tokenizer = load_encoder(str(enc / "query_encoder"))
    saved = ValidQueries(params, paths).measure_encoder(model, tokenizer, np.load(enc / "embeddings.npy"))
    assert {k: out["{}"][k] for k in saved} == saved
    capped = out['{"max_queries": 5}']
    assert capped["training_queries"] <= 5 < out["{}"]["training_queries"]  # the setting took effect
    for row in (out["bm25"], out["zero_shot"], capped):
        assert 0.0 <= row["ndcg_at_10"] <= 1.0 and 0.0 <= row["recall_at_100"] <= 1.0
    with pytest.raises(ParamsError, match="epoch"):
        encoder_ndcg(params, paths, [{"epoch": 3}])  # a misspelt setting is refused, not ignored

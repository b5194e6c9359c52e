"""Bring your own data, end to end: a shop's canonical folder unlike both shipped datasets (0..4 judgments
relevant from 3, the matching words in descriptions, vendor contact lines, another year's purchases,
ids with leading zeros) through every step to the evaluation metrics and a served answer.

The only params set are the data description (data.search / data.recommend) and the tiny training
budget every pipeline test uses (search_slice's OVERRIDES, the recommend test's TINY: speed only).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from artifacts.paths import Paths
from components import schema as s
from pipelines.common import load_params
from tests.pipelines._byod_data import SCALE, write_byod_data
from tests.pipelines.test_recommend_pipeline import TINY
from tests.pipelines.test_search_pipeline import OVERRIDES

pytestmark = pytest.mark.slow

SALT = "byod-test-salt"


def data_description(shop) -> dict:
    """All a shop sets: where its files are, its judgment scale, and cutoffs from the data (null)."""
    return {
        "data.search": {"source": "canonical", "path": str(shop), "relevance": SCALE},
        "data.recommend": {"source": "canonical", "path": str(shop), "test_cutoff": None, "valid_cutoff": None},
    }


@pytest.fixture(scope="module")
def shop_run(tmp_path_factory):
    from bench import text_fields
    from pipelines import (
        build_index,
        embed_catalog,
        evaluate_recommend,
        evaluate_search,
        ingest,
        split,
        train_encoder,
        train_ranker,
        train_recommend,
        validate,
    )

    root = tmp_path_factory.mktemp("byod")
    env = {
        "HATCHERY_HOME": str(root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HATCHERY_PSEUDONYM_SALT": SALT,
    }
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    shop = write_byod_data(root / "myshop")
    params = load_params(overrides={**data_description(shop), **OVERRIDES, **TINY})
    paths = Paths(root=root)
    out = {"paths": paths, "params": params, "shop": shop, "env": env}
    ingest.run(params, paths)
    out["validate"] = validate.run(params, paths)
    out["split"] = split.run(params, paths)
    embed_catalog.run(params, paths)
    train_encoder.run(params, paths, progress=False)
    build_index.run(params, paths)
    out["ranker"] = train_ranker.run(params, paths)
    out["search"] = evaluate_search.run(params, paths)
    train_recommend.run(params, paths)
    out["recommend"] = evaluate_recommend.run(params, paths)
    out["text_fields"] = text_fields.run(params, paths)  # titles only, trained beside; all fields: read
    yield out
    mp.undo()


def test_ids_keep_their_leading_zeros_and_contact_lines_are_redacted(shop_run) -> None:
    paths = shop_run["paths"]
    catalog = pd.read_parquet(paths.validated / "search" / "catalog.parquet")
    raw = pd.read_csv(shop_run["shop"] / "catalog.csv", dtype=str)
    assert catalog[s.PRODUCT_ID].tolist() == raw[s.PRODUCT_ID].tolist() and catalog[s.PRODUCT_ID].iloc[0] == "00010"
    events = pd.read_parquet(paths.validated / "recommend" / "events.parquet")
    assert set(events[s.PRODUCT_ID]) <= set(catalog[s.PRODUCT_ID])
    redacted = catalog[catalog[s.DESCRIPTION].str.contains("Vendor contact")][s.DESCRIPTION]
    assert len(redacted) == 3 and redacted.str.contains(r"\[email\] or \[phone\]").all()
    assert not catalog[s.DESCRIPTION].str.contains("@|555-", regex=True).any()
    notes = shop_run["validate"]["redactions"]
    assert {(n["domain"], n["table"], n["column"], n["rows"]) for n in notes} == {
        ("search", "catalog", "description", 3),
        ("recommend", "catalog", "description", 3),
    }


def test_recommendation_cutoffs_come_from_the_data(shop_run) -> None:
    folds = json.loads((shop_run["paths"].split / "recommend" / "folds.json").read_text())
    last = pd.read_csv(shop_run["shop"] / "events.csv")[s.TIMESTAMP].max()
    assert last.startswith("2023-06-30")
    # The last 30 days (from the midnight after the last event) are the test window, the 30 before valid.
    assert folds["test"]["cutoff"] == "2023-06-01T00:00:00" and folds["valid"]["cutoff"] == "2023-05-02T00:00:00"
    assert shop_run["split"]["recommend.test.evaluated_users"] > 20


def test_every_metric_reads_the_shops_judgment_scale(shop_run) -> None:
    from components.search_eval import judged_gains, relevant_sets

    scale = shop_run["params"].data.search.relevance
    test = pd.read_parquet(shop_run["paths"].split / "search" / "test.parquet")
    gains = judged_gains(test, scale)
    relevant = relevant_sets(gains, scale)
    graded = test.set_index([s.QUERY_ID, s.PRODUCT_ID])[s.RELEVANCE]
    assert all(graded[(q, p)] >= 3 for q, ps in relevant.items() for p in ps)  # relevant from 3, not 2.5
    assert sum(map(len, relevant.values())) == int((test[s.RELEVANCE] >= 3).sum())
    report = shop_run["search"]["models"]
    assert report["hybrid_ranker"]["recall_at_100_n"] == sum(1 for ps in relevant.values() if ps)
    assert 0.0 < report["hybrid_ranker"]["ndcg_at_10"] <= 1.0
    # Grades 3 and 4 stay apart as ranker labels (the 1..3 scale's fixed /2 would clip both to the top).
    from components.search_features import gains_to_labels

    labels = gains_to_labels(scale.gain_of(np.array([0.0, 1.0, 2.0, 3.0, 4.0])), 7, scale.max_gain)
    assert len(set(labels.tolist())) == 5 and labels[-1] == 6


def test_search_reads_descriptions_all_fields_beat_titles_only(shop_run) -> None:
    from bench import text_fields

    res = shop_run["text_fields"]
    print("\nsearch on the BYOD test data, all text fields vs titles only (python -m bench.text_fields):")
    for name, r in res.items():
        scores = "  ".join(
            f"{m} NDCG@10 {r[m]['ndcg_at_10']:.3f} R@100 {r[m]['recall_at_100']:.3f}" for m in text_fields.MODELS
        )
        print(f"  {name:<12} {','.join(r['fields']):<32} {scores}  catalog pass {r['catalog_pass_cpu_seconds']} CPU s")
    assert res["all_fields"]["fields"] == ["title", "brand", "category", "description"]
    assert res["titles_only"]["fields"] == ["title"]
    for model in ("bm25", "hybrid_ranker"):
        assert res["all_fields"][model]["ndcg_at_10"] > res["titles_only"][model]["ndcg_at_10"]


def test_a_served_answer_finds_a_product_by_its_description_and_recommends_for_a_raw_user(shop_run) -> None:
    from starlette.testclient import TestClient

    paths = shop_run["paths"]
    env = {
        **shop_run["env"],
        "HATCHERY_SEARCH_BUNDLE": str(paths.bundle("search")),
        "HATCHERY_RECOMMEND_BUNDLE": str(paths.bundle("recommend")),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from services.service import Hatchery
        from tests.services._stand_ins import forget_bentoml_metrics

        forget_bentoml_metrics()  # an earlier in-process app (the browser tests') registered BentoML's metric names
        catalog = pd.read_parquet(paths.validated / "search" / "catalog.parquet")
        target = catalog.iloc[42]
        colour, material = target[s.DESCRIPTION].split()[1:3]  # "A <colour> <material> <type>, ..."
        user = pd.read_csv(shop_run["shop"] / "events.csv", dtype=str)[s.USER_ID].iloc[0]
        with TestClient(Hatchery.to_asgi()) as http:
            found = http.post("/search", json={"query": f"{colour} {material}", "k": 5})
            recs = http.post("/recommend", json={"user_id": user, "k": 5})
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert found.status_code == 200, found.text
    top = catalog.set_index(s.PRODUCT_ID).loc[found.json()["results"][0]["product_id"]]
    # The query's words are in the top product's description and nowhere in its title.
    assert f"{colour} {material}" in top[s.DESCRIPTION] and not {colour, material} & set(top[s.TITLE].lower().split())
    assert user.startswith("0") and recs.status_code == 200, recs.text
    assert len(recs.json()["results"]) == 5 and recs.json()["results"][0]["source"] == "ranker"  # a known user
    assert {r["product_id"] for r in recs.json()["results"]} <= set(catalog[s.PRODUCT_ID])


def test_the_rollout_replays_recommendations_for_the_shops_own_raw_user_ids(shop_run) -> None:
    """The staged rollout's simulated shoppers send the raw ids of the run's own events (leading zeros kept),
    recovered through the same salted pseudonyms, not ids from a shipped dataset."""
    from pipelines.replay import make_source, raw_user_ids

    users = shop_run["params"].data.recommend
    raw_ids = raw_user_ids(SALT, users)
    events = pd.read_csv(shop_run["shop"] / "events.csv", dtype=str)
    assert set(raw_ids.values()) == set(events[s.USER_ID])
    source = make_source("recommend", shop_run["paths"], users=users)
    requests = list(source.requests(20, np.random.default_rng(0)))
    assert requests and all(r.body["user_id"] in set(events[s.USER_ID]) for r in requests)
    assert all(len(r.body["user_id"]) == 6 for r in requests)  # "000003", as the shop's front end sends it

"""implicit_judgments on real-data slices, with simulated shop traffic logged into a feedback store.

The traffic deliberately covers every split (train, valid and test queries; recommendation visits on
both sides of the test cutoff): the step must keep only what may train.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from artifacts.feedback_store import FeedbackStore
from components import schema as s
from components.feedback import implicit as im
from components.feedback import shop
from components.splits import query_bucket
from pipelines import implicit_judgments
from pipelines.common import load_params
from tests.pipelines._recommend_slice import TEST_CUTOFF, VALID_CUTOFF, write_recommend_slice
from tests.pipelines._search_slice import write_search_slice


@pytest.fixture
def logged(paths, homedepot_raw, online_retail_raw, monkeypatch):
    monkeypatch.delenv("HATCHERY_STATE_URL", raising=False)
    params = load_params()
    write_search_slice(homedepot_raw, paths, n_products=200, n_queries=40)
    write_recommend_slice(online_retail_raw, paths, n_customers=40)
    judged = pd.concat(pd.read_parquet(paths.split / "search" / f"{n}.parquet") for n in ("train", "valid", "test"))
    by_query = {q: sorted(g[s.PRODUCT_ID].astype(str)) for q, g in judged.groupby(s.QUERY)}

    def rank(query: str, k: int) -> list[str]:  # the judged products in id order: relevance plays no part
        return by_query[query][:k]

    scale = params.data.search.relevance
    searches = shop.search_traffic(judged, rank, 3000, 0, 0.0, 86400.0, scale, shop.Shopper(swap_share=0.5))
    history = pd.read_parquet(paths.split / "recommend" / "test" / "history.parquet")
    truths = {u: set(g[s.PRODUCT_ID].astype(str)) for u, g in history.groupby(s.USER_ID)}
    popular = history[s.PRODUCT_ID].value_counts().index.astype(str).tolist()
    start, end = (VALID_CUTOFF.timestamp(), (TEST_CUTOFF + pd.Timedelta(days=20)).timestamp())
    visits = shop.recommend_traffic(truths, lambda u, k: popular[:k], 1000, 1, start, end)
    store = FeedbackStore(paths=paths)
    for traffic in (searches, visits):
        store.append_many(*shop.to_records(traffic))
    return params, judged


def test_implicit_training_data_holds_nothing_of_held_out_queries_or_the_test_window(paths, logged):
    params, judged = logged
    summary = implicit_judgments.run(params, paths)  # reads the default store under paths.root

    out = pd.read_parquet(paths.feedback_judgments)
    splits = pd.read_parquet(paths.split / "search" / "queries.parquet")
    held_out = set(splits.loc[splits[s.SPLIT] != "train", s.QUERY])
    train = set(splits.loc[splits[s.SPLIT] == "train", s.QUERY])
    assert held_out and held_out <= set(judged[s.QUERY])  # the traffic did search held-out queries ...
    assert summary["search_pairs_dropped_held_out"] > 0
    assert not set(out[s.QUERY]) & held_out  # ... and none of them got a judgment
    assert not out[s.QUERY].map(query_bucket).isin([8, 9]).any()
    assert set(out[s.QUERY]) == train  # every training query searched got its judgments
    assert out[s.RELEVANCE].between(params.data.search.relevance.min, params.data.search.relevance.max).all()
    assert out[im.CONFIDENCE].between(0, 1).all() and (out[im.IMPRESSIONS] >= 3).all()
    s.conform(s.JUDGMENTS, out)
    # the implicit grades agree with the human ones on the pairs both have
    both = out.merge(judged, on=[s.QUERY, s.PRODUCT_ID], suffixes=("", "_human"))
    assert both[s.RELEVANCE].corr(both[f"{s.RELEVANCE}_human"], method="spearman") > 0.3

    events = pd.read_parquet(paths.feedback_events)
    assert len(events) > 0 and summary["recommend_events_dropped_after_test_cutoff"] > 0
    assert (events[s.TIMESTAMP] < TEST_CUTOFF).all()
    assert set(events[s.EVENT_TYPE]) <= {im.PURCHASE, im.ADD_TO_CART}
    s.conform(s.EVENTS, events)
    assert json.loads((paths.feedback_data / "summary.json").read_text()) == summary

    # a rerun on the same log writes the same bytes (DVC keeps the training stages cached) ...
    first = {p.name: p.read_bytes() for p in paths.feedback_data.iterdir()}
    implicit_judgments.run(params, paths)
    assert {p.name: p.read_bytes() for p in paths.feedback_data.iterdir()} == first

    # ... and a fresh clone (no store yet) gets empty tables, without a store being made
    paths.feedback_store.unlink()
    logs = implicit_judgments.read_logs(paths)
    empty, no_events, summary = implicit_judgments.build(params, logs, splits, TEST_CUTOFF)
    assert empty.empty and no_events.empty and summary["search_pairs"] == 0
    assert not paths.feedback_store.exists()


def test_a_stage_in_a_run_workspace_reads_the_store_the_service_writes(tmp_path, monkeypatch) -> None:
    """A lifecycle run with overrides runs its DVC stages in a workspace (their HATCHERY_HOME); the feedback
    store stays the base root's, where the service logs: else implicit_judgments reads an empty store."""
    from artifacts.paths import Paths
    from pipelines.dvc_stage import stage_env, workspace_root

    monkeypatch.delenv("HATCHERY_FEEDBACK_DB", raising=False)
    base = Paths(root=tmp_path)
    workspace = workspace_root({"search.ranker.n_estimators": 3}, base)
    env = stage_env(workspace, base)
    assert env["HATCHERY_HOME"] == str(workspace)
    monkeypatch.setenv("HATCHERY_HOME", env["HATCHERY_HOME"])
    monkeypatch.setenv("HATCHERY_FEEDBACK_DB", env["HATCHERY_FEEDBACK_DB"])
    assert Paths().feedback_store == base.feedback_store != Paths(root=workspace).root / "feedback" / "feedback.sqlite"

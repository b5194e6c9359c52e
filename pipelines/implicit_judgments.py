"""implicit_judgments: the feedback store's impressions and events -> implicit training data.

Search: a position-based click model fitted by EM on every logged search answer and its clicks
(components/feedback/implicit.py says why PBM), one graded judgment per (normalised query, product) on
the judgment scale (data.search.relevance) with a confidence. Recommendation: purchases and
add-to-carts on shown recommendations become canonical events with a weight
(recommend.feedback_events.weights).

Leakage guard (what keeps the protocol's test numbers honest when training takes these tables):
- search: judgments of a query the split put in valid or test (normalised text, as split.py
  normalises), or of any query whose md5 bucket is a valid or test bucket (a later re-split would put
  it there), are dropped here, so nothing a shopper did on a held-out query can label training data;
- recommendation: events at or after the test cutoff (data/split/recommend/folds.json) are dropped
  here, and train_recommend adds to each fold only the events strictly before that fold's cutoff.
Both counts are in summary.json.

Outputs (data/feedback/, artifacts.paths):
  search_judgments.parquet  query_id, query, product_id, relevance, confidence, impressions, clicks, examinations
  recommend_events.parquet  user_id, product_id, event_type, timestamp, quantity, price, session_id, weight
  summary.json              counts (read, kept, dropped by the guard) and the examination curve

The store is an external, append-only log (SQLite or PostgreSQL): DVC cannot hash it, so the stage
is `always_changed` and its outputs are rewritten byte-identical when nothing new arrived (the
training stages that read them then stay cached).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from artifacts.files import staged_dir, write_json
from artifacts.paths import Paths
from components import schema as s
from components.config import Params
from components.feedback import implicit as im
from pipelines.common import load_params, mlflow_run

log = logging.getLogger(__name__)

STEP = "implicit_judgments"


def read_logs(paths: Paths, store=None) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{domain: (impressions, feedback)} from the feedback store (default: the configured one).

    With no store configured and no embedded file yet (a fresh clone), empty frames: no file is made.
    """
    from artifacts.feedback_store import FeedbackStore, state_url
    from components.feedback import records as r

    if store is None:
        if state_url() is None and not paths.feedback_store.exists():
            empty = (pd.DataFrame(columns=list(r.IMPRESSION_COLUMNS)), pd.DataFrame(columns=list(r.FEEDBACK_COLUMNS)))
            return {d: empty for d in ("search", "recommend")}
        store = FeedbackStore(paths=paths)
    return {d: (store.impressions(domain=d), store.feedback(domain=d)) for d in ("search", "recommend")}


def build(
    params: Params,
    logs: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
    split_queries: pd.DataFrame,
    test_cutoff,
    prices: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(search judgments, recommendation events, summary) from the logs, after the leakage guard.

    split_queries: split.py's queries.parquet (query, split); test_cutoff: the recommendation test
    fold's cutoff (a datetime).
    """
    fj, sp = params.search.feedback_judgments, params.split
    imp, fb = logs["search"]
    judged, theta = im.search_judgments(
        imp, fb, params.data.search.relevance, fj.prior_strength, fj.half_confidence, fj.min_impressions
    )
    kept = im.drop_held_out(
        judged,
        im.held_out_queries(split_queries),
        sp.search_buckets,
        [*sp.search_valid_buckets, *sp.search_test_buckets],
    )
    rimp, rfb = logs["recommend"]
    events = im.recommend_events(rimp, rfb, params.recommend.feedback_events.weights, prices)
    before = im.events_before(events, test_cutoff)
    summary = {
        "search_impressions": int(len(imp)),
        "search_events": int(len(fb)),
        "search_pairs": int(len(judged)),
        "search_pairs_kept": int(len(kept)),
        "search_pairs_dropped_held_out": int(len(judged) - len(kept)),
        "search_queries_kept": int(kept[s.QUERY_ID].nunique()),
        "examination": [None if np.isnan(t) else round(float(t), 4) for t in theta[:20]],
        "recommend_impressions": int(len(rimp)),
        "recommend_events": int(len(rfb)),
        "recommend_training_events": int(len(before)),
        "recommend_events_dropped_after_test_cutoff": int(len(events) - len(before)),
        "test_cutoff": pd.Timestamp(test_cutoff).isoformat(),
    }
    return kept, before, summary


def run(params: Params, paths: Paths, store=None) -> dict:
    """Read the store, build both tables with the guard, write data/feedback/; returns the summary."""
    split_queries = pd.read_parquet(paths.split / "search" / "queries.parquet")
    folds = json.loads((paths.split / "recommend" / "folds.json").read_text())
    catalog = paths.validated / "recommend" / "catalog.parquet"
    prices = None
    if catalog.exists():
        cat = pd.read_parquet(catalog)
        if s.PRICE in cat.columns:
            prices = dict(zip(cat[s.PRODUCT_ID].astype(str), cat[s.PRICE].astype(float), strict=True))
    inputs = [paths.split / "search" / "queries.parquet", paths.split / "recommend" / "folds.json"]
    with mlflow_run(STEP, params, paths, inputs=inputs, sections=("search", "recommend")):
        import mlflow

        judged, events, summary = build(
            params, read_logs(paths, store), split_queries, pd.Timestamp(folds["test"]["cutoff"]), prices
        )
        with staged_dir(paths.feedback_data) as out:
            judged.to_parquet(out / paths.feedback_judgments.name, index=False)
            events.to_parquet(out / paths.feedback_events.name, index=False)
            write_json(out / "summary.json", summary)
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
        log.info("implicit judgments: %s", {k: v for k, v in summary.items() if k != "examination"})
    return summary


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())

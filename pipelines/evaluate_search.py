"""evaluate_search: EVALUATION.md's search metrics on TEST for every model and baseline, side by side.

Models (names as in metrics/search.json):
  random               re-rank only: the exact expected NDCG@10 of a random order of judged products
  bm25                 BM25 of the product text (search.text_fields; Home Depot: titles), k1 = 1.2, b = 0.75
  zero_shot            the pretrained encoder, exact cosine search over its cached catalog embeddings
  rrf_bm25_zero_shot   reciprocal-rank fusion (k = rrf_k) of the two baselines' full rankings
  fine_tuned           the fine-tuned two-tower encoder alone, exact cosine search
  content_ranker       the same SearchModel with the content-only ranker (train_ranker's
                       models/search/content_ranker/): no judgment-derived feature, title/text-only BM25
  hybrid_ranker        the bundle's SearchModel: hybrid candidates + LightGBM re-rank over its feature
                       groups (search.ranker.feature_groups; primary)

Outputs:
  metrics/search.json                 {"primary": ..., "models": {name: {ndcg_at_10, _ci, recall_at_100, ...}}}
  models/search/eval/per_query.parquet  per test query: slices and <model>__<metric> (NaN where skipped)
  models/search/eval/slices.json       slice means
  models/search/plots/*.png            plots (dvc.yaml declares them; also MLflow artifacts)

Slices: query_length "1", "2", "3", "4+" words; head_tail "head" when every token of the query occurs
in at least 20 distinct train queries, else "tail" (components.search_eval.head_or_tail); judged_pool
"never_judged" when none of the query's relevant products has a train judgment, else "judged"
(components.search_eval.judged_pool).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from artifacts.files import staged_dir, write_json
from artifacts.paths import Paths
from components import schema as s
from components.config import Params
from pipelines.common import load_params, mlflow_run

log = logging.getLogger(__name__)

STEP = "evaluate_search"
PRIMARY = "hybrid_ranker"
CONTENT = "content_ranker"
SLICES = ("query_length", "head_tail", "judged_pool")
METRICS = ("ndcg_at_10", "recall_at_100", "rerank_ndcg_at_10")


def _full_ranking(scores: np.ndarray, k: int = 100) -> np.ndarray:
    from components.bm25 import top_k

    return top_k(scores, k)


def _ranks(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """1-based rank of each idx in a full-catalog score vector (ties share the better rank)."""
    srt = np.sort(-scores)
    return np.searchsorted(srt, -scores[idx], side="left") + 1


def run(params: Params, paths: Paths) -> dict:
    import dataclasses
    import json

    import lightgbm as lgb

    from artifacts.search_bundle import load_search_bundle, read_manifest
    from components.encoder import encode_texts, load_encoder
    from components.search_eval import (
        full_catalog_metrics,
        head_or_tail,
        judged_gains,
        judged_pool,
        query_length_bucket,
        random_rerank_ndcg,
        rerank_ndcg,
        summarize_metrics,
        token_query_counts,
    )

    sp, scale = params.search, params.data.search.relevance
    test = pd.read_parquet(paths.split / "search" / "test.parquet")
    train = pd.read_parquet(paths.split / "search" / "train.parquet")
    model = load_search_bundle(paths.bundle("search"))
    pid = model.product_ids.astype(str)
    pos = {p: i for i, p in enumerate(pid)}
    gains = judged_gains(test, scale)
    qframe = test.groupby(s.QUERY_ID, sort=True)[s.QUERY].first()
    qids, texts = qframe.index.astype(str).tolist(), qframe.astype(str).tolist()
    judged_idx = [np.array([pos[p] for p in sorted(gains[q]) if p in pos], dtype=np.int64) for q in qids]
    judged_pid = [pid[j] for j in judged_idx]
    # The content-only ranker runs on the bundle's parts; SearchModel drops the priors and the expanded
    # BM25 for a ranker without judgment-derived features.
    content_dir = paths.domain("search") / "content_ranker"
    variants = {PRIMARY: model}
    if (content_dir / "ranker.txt").exists():
        content_meta = json.loads((content_dir / "meta.json").read_text())
        variants = {
            CONTENT: dataclasses.replace(
                model,
                booster=lgb.Booster(model_file=str(content_dir / "ranker.txt")),
                feature_names=tuple(content_meta["feature_names"]),
            ),
            PRIMARY: model,
        }
    feature_groups = {name: _groups_of(m.feature_names) for name, m in variants.items()}
    feature_groups[PRIMARY] = read_manifest(paths.bundle("search")).get("feature_groups", feature_groups[PRIMARY])

    inputs = [paths.split / "search", paths.bundle("search"), paths.embeddings]
    with mlflow_run(STEP, params, paths, inputs=inputs, sections=("search",)):
        import mlflow

        timings: dict[str, float] = {}
        rankings: dict[str, list] = {}
        judged_scores: dict[str, list] = {}

        start = time.perf_counter()
        zs_emb = np.load(paths.embeddings / "embeddings.npy")
        zs_model, zs_tok = load_encoder(sp.encoder)
        zs_q = encode_texts(zs_model, zs_tok, texts, 256, sp.query_max_length)
        ft_q = model.encode_queries(texts)
        rankings.update(bm25=[], zero_shot=[], rrf_bm25_zero_shot=[], fine_tuned=[])
        judged_scores.update(bm25=[], zero_shot=[], rrf_bm25_zero_shot=[], fine_tuned=[])
        for i, q in enumerate(texts):
            j = judged_idx[i]
            bm = model.bm25.score(q)
            zs = zs_emb @ zs_q[i]
            ft = model.embeddings @ ft_q[i]
            for name, sc in (("bm25", bm), ("zero_shot", zs), ("fine_tuned", ft)):
                rankings[name].append(pid[_full_ranking(sc)])
                judged_scores[name].append(dict(zip(judged_pid[i], sc[j].tolist(), strict=True)))
            rrf = 1.0 / (sp.rrf_k + _ranks(bm, np.arange(len(bm)))) + 1.0 / (sp.rrf_k + _ranks(zs, np.arange(len(zs))))
            rankings["rrf_bm25_zero_shot"].append(pid[_full_ranking(rrf)])
            judged_scores["rrf_bm25_zero_shot"].append(dict(zip(judged_pid[i], rrf[j].tolist(), strict=True)))
        timings["baselines_seconds"] = time.perf_counter() - start

        for name, variant in variants.items():
            start = time.perf_counter()
            ranked = variant.rank_queries(texts, k=100, q_embs=ft_q)
            rankings[name] = [pid[idx] for idx, _ in ranked]
            judged_scores[name] = [
                dict(zip(judged_pid[i], variant.score_products(q, judged_idx[i], ft_q[i]).tolist(), strict=True))
                for i, q in enumerate(texts)
            ]
            timings[f"{name}_seconds"] = time.perf_counter() - start

        counts = token_query_counts(train[s.QUERY].astype(str).tolist())
        train_products = set(train[s.PRODUCT_ID].astype(str))
        per_query = pd.DataFrame(
            {
                s.QUERY_ID: qids,
                s.QUERY: texts,
                "query_length": [query_length_bucket(q) for q in texts],
                "head_tail": [head_or_tail(q, counts) for q in texts],
                "judged_pool": [judged_pool(gains.get(q, {}), train_products, scale) for q in qids],
            }
        )
        summary: dict[str, dict] = {}
        rnd = random_rerank_ndcg(qids, gains)
        per_query[s.unit_column("random", "rerank_ndcg_at_10")] = rnd
        summary["random"] = {
            "ndcg_at_10": None,
            "ndcg_at_10_ci": None,
            "recall_at_100": None,
            "recall_at_100_ci": None,
            **summarize_metrics({"rerank_ndcg_at_10": rnd}, sp.bootstrap_resamples, sp.eval_seed),
        }
        for name in ("bm25", "zero_shot", "rrf_bm25_zero_shot", "fine_tuned", *variants):
            full = full_catalog_metrics(qids, rankings[name], gains, scale)
            rr = rerank_ndcg(qids, judged_scores[name], gains)
            per_query[s.unit_column(name, "ndcg_at_10")] = full["ndcg_at_10"].to_numpy()
            per_query[s.unit_column(name, "recall_at_100")] = full["recall_at_100"].to_numpy()
            per_query[s.unit_column(name, "rerank_ndcg_at_10")] = rr
            summary[name] = summarize_metrics(
                {"ndcg_at_10": full["ndcg_at_10"], "recall_at_100": full["recall_at_100"], "rerank_ndcg_at_10": rr},
                sp.bootstrap_resamples,
                sp.eval_seed,
            )
        slices = {col: _slice_table(per_query, col, list(summary)) for col in SLICES}
        report = {
            "primary": PRIMARY,
            # shown next to the primary in the gate report: what the ranker scores without judgments
            "reported_alongside": [n for n in variants if n != PRIMARY],
            "test_queries": len(qids),
            "models": summary,
            "feature_groups": feature_groups,
            "targets": {"ndcg_at_10": 0.43, "recall_at_100": 0.85},
            "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        }
        write_json(paths.metrics / "search.json", report)
        with staged_dir(paths.eval("search")) as out:
            per_query.to_parquet(out / paths.per_unit("search").name, index=False)
            write_json(out / "slices.json", slices)
        with staged_dir(paths.plots("search")) as out:
            _plot_models(summary, out / "metrics_by_model.png")
            _plot_slices(slices, out / "metrics_by_slice.png")
        for name, m in summary.items():
            mlflow.log_metrics(
                {f"{name}.{k}": v for k, v in m.items() if isinstance(v, int | float) and not k.endswith("_n")}
            )
        mlflow.log_artifacts(str(paths.eval("search")), artifact_path="eval")
        mlflow.log_artifacts(str(paths.plots("search")), artifact_path="eval")
        mlflow.log_metrics(timings)
        for name in summary:
            m = summary[name]
            log.info(
                "%-20s ndcg@10 %s %s  recall@100 %s %s  rerank %s %s",
                name,
                m["ndcg_at_10"],
                m["ndcg_at_10_ci"],
                m["recall_at_100"],
                m["recall_at_100_ci"],
                m["rerank_ndcg_at_10"],
                m["rerank_ndcg_at_10_ci"],
            )
    return report


def _groups_of(feature_names) -> list[str]:
    from components.search_features import group_of

    return sorted({group_of(f) for f in feature_names})


def _slice_table(per_query: pd.DataFrame, col: str, models: list[str]) -> dict:
    out: dict = {}
    for value, grp in per_query.groupby(col, sort=True):
        row = {"queries": int(len(grp))}
        for m in models:
            for metric in ("ndcg_at_10", "recall_at_100"):
                c = s.unit_column(m, metric)
                if c in grp:
                    row[c] = round(float(grp[c].mean()), 4) if grp[c].notna().any() else None
        out[str(value)] = row
    return out


def _plot_models(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes, METRICS, strict=True):
        names = [n for n in summary if summary[n].get(metric) is not None]
        vals = [summary[n][metric] for n in names]
        lo = [v - summary[n][f"{metric}_ci"][0] for n, v in zip(names, vals, strict=True)]
        hi = [summary[n][f"{metric}_ci"][1] - v for n, v in zip(names, vals, strict=True)]
        ax.barh(names, vals, xerr=[lo, hi], capsize=3, color="#4C72B0")
        ax.set_title(f"{metric} (95% bootstrap CI)")
        ax.set_xlim(min(vals) * 0.9 if metric.startswith("rerank") else 0, min(1.0, max(vals) * 1.1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_slices(slices: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(slices), figsize=(7 * len(slices), 4))
    for ax, (col, table) in zip(axes, slices.items(), strict=True):
        values = list(table)
        models = sorted({m for row in table.values() for m in s.models_with(row, "ndcg_at_10")})
        width = 0.8 / max(len(models), 1)
        for i, m in enumerate(models):
            ys = [table[v].get(s.unit_column(m, "ndcg_at_10")) or 0.0 for v in values]
            ax.bar(np.arange(len(values)) + i * width, ys, width, label=m)
        ax.set_xticks(np.arange(len(values)) + 0.4 - width / 2)
        ax.set_xticklabels([f"{v}\n(n={table[v]['queries']})" for v in values])
        ax.set_title(f"full-catalog NDCG@10 by {col}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())

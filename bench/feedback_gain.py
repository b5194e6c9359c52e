"""Retrained with simulated feedback vs without, on the real data and the same human-judged test split.

    python -m bench.feedback_gain [--domains search recommend] [--search-queries 3000]
                                  [--search-requests 20000] [--recommend-visits 20000] [--seed 0]

Two arms, each in its own temporary outputs root and process, side by side (HATCHERY_HOME, MLflow and
the feedback store all there; the source root's data/validated and data/split are copied in, its
catalog embeddings linked, read only; the search encoder and index are trained once and shared, the
switch does not touch them):
- without: train (search: the ranker; recommendation: the re-ranker and its generators) with
  params.yaml as it is, and evaluate as the lifecycle does (evaluate_search / evaluate_recommend);
- with: simulate shop traffic (components/feedback/shop.py) into that root's feedback store, run the
  implicit_judgments step on it (the position-based click model, the leakage guard), then the same
  training with the switch on (search.feedback_judgments.enabled, recommend.feedback_events.enabled)
  and the same evaluation. Only the switch differs.
The traffic: search, `--search-requests` answers over `--search-queries` TRAIN queries drawn at
random, each answered by BM25 over the catalog (a shop's first engine; it needs no trained model, so
the arms run side by side), a position-based shopper clicking from the TRAIN judgments of that query;
recommendation, `--recommend-visits` visits in the 60 days before the earliest training cutoff (the
selection fold's, valid_cutoff - recommend.selection_window_days) by the users who bought in those
days, each shown their own-frequency-then-popularity top 20 computed on the events before those 60
days, a shopper clicking and buying what that user did buy in those days.

Why this cannot leak valid or test: every click follows a train-split judgment and every simulated
query is a train query (valid and test queries are never drawn, and the step's guard would drop them);
every simulated purchase is an item the user bought before the selection fold's cutoff, stamped
before it, and the lists shown were computed from events before the simulated days; the test window
(and the valid window) is never read to make traffic. So the "with" arm learns nothing the "without"
arm could not have: what it measures is whether re-reading training data through shoppers' clicks
(position-debiased) helps, which is what feedback on training-like traffic can give.

Prints both primary metrics side by side with their 95 % bootstrap intervals over test units and the
paired bootstrap of the difference; merges into metrics/feedback.json (of the source root):
  search_ndcg_at_10_without_feedback, search_ndcg_at_10_with_feedback       full-catalog NDCG@10 of
      the registered model (hybrid_ranker) on the human-judged test queries
  recommend_recall_at_20_without_feedback, recommend_recall_at_20_with_feedback   Recall@20 of the
      re-ranker on the protocol's temporal test split
each with `_ci` (its 95 % interval), and per domain `<domain>_<metric>_feedback_gain` (with - without)
and `..._feedback_gain_ci` (paired bootstrap, 1,000 resamples, seed 0). The full record goes to
reports/bench/feedback_gain.json. One arm alone: --arm without|with --work ROOT [--models-from ROOT];
two finished arms compared: --compare WITHOUT_ROOT WITH_ROOT.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from artifacts.files import write_json
from artifacts.paths import Paths
from components import schema as s
from components.config import Params, apply_overrides, parse_params

log = logging.getLogger(__name__)

METRICS_FILE = "feedback.json"
PRIMARY = {"search": ("hybrid_ranker", "ndcg_at_10"), "recommend": ("rerank", "recall_at_20")}
SWITCH = {"search": "search.feedback_judgments.enabled", "recommend": "recommend.feedback_events.enabled"}
EPOCH = 1_767_225_600.0  # 2026-01-01 UTC: simulated search traffic's first day (search has no time split)
DAY_S = 86_400.0


def merge_metrics(path: Path, values: dict[str, Any]) -> None:
    """Read-modify-write of a metrics JSON file: `values` replace their keys, other keys stay."""
    current = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**current, **values})


def link_inputs(source: Paths, work: Paths, domains: list[str]) -> None:
    """The source's split data (copied: a rerun of split there mid-benchmark must not change it) and its
    catalog embeddings (linked: large, read only) in the work root."""
    import shutil

    for rel in ("data/validated", "data/split", *(["models/search/embeddings"] if "search" in domains else [])):
        src, dst = source.root / rel, work.root / rel
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing: run `dvc repro split embed_catalog` in {source.root} first")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel.startswith("data/"):
            shutil.copytree(src, dst)
        else:
            dst.symlink_to(src.resolve(), target_is_directory=True)


def with_switch(raw: dict, domain: str, on: bool) -> Params:
    return parse_params(apply_overrides(raw, {SWITCH[domain]: on}))


def primary_of(work: Paths, domain: str) -> tuple[dict, pd.DataFrame]:
    """(the primary model's summary in metrics/<domain>.json, its per-unit metric column with the unit id)."""
    model, metric = PRIMARY[domain]
    summary = json.loads(work.metrics_file(domain).read_text())["models"][model]
    per_unit = pd.read_parquet(work.per_unit(domain))
    unit = s.QUERY_ID if domain == "search" else s.USER_ID
    return summary, per_unit[[unit, s.unit_column(model, metric)]].rename(columns={unit: "unit"})


def train_and_evaluate(domain: str, params: Params, work: Paths) -> tuple[dict, pd.DataFrame, float]:
    start = time.perf_counter()
    if domain == "search":
        from pipelines import evaluate_search, train_ranker

        train_ranker.run(params, work)
        evaluate_search.run(params, work)
    else:
        from pipelines import evaluate_recommend, train_recommend

        train_recommend.run(params, work)
        evaluate_recommend.run(params, work)
    summary, per_unit = primary_of(work, domain)
    return summary, per_unit, time.perf_counter() - start


def search_traffic(params: Params, work: Paths, n_queries: int, n_requests: int, seed: int):
    """Simulated searches over train queries, answered by BM25 over the catalog (a shop's first engine:
    it needs no trained model, so the two arms can train side by side)."""
    from components.bm25 import fit_bm25, top_k
    from components.feedback import shop
    from pipelines.io import read_table

    sp = params.search
    train = pd.read_parquet(work.split / "search" / "train.parquet")
    queries = sorted(train[s.QUERY].astype(str).unique())
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(queries, size=min(n_queries, len(queries)), replace=False).tolist())
    pool = train[train[s.QUERY].isin(set(picked))]
    catalog = read_table(work.validated / "search", s.CATALOG)
    ids = catalog[s.PRODUCT_ID].astype(str).to_numpy()
    bm25 = fit_bm25(s.product_texts(catalog, sp.text_fields), sp.bm25_k1, sp.bm25_b)
    start = time.perf_counter()
    ranked = {}
    for q in picked:
        scores = bm25.score(q)
        top = top_k(scores, 10)
        ranked[s.normalize_query(q)] = (ids[top].tolist(), scores[top].astype(float).tolist())
    log.info("ranked %d train queries with BM25 in %.0f s", len(ranked), time.perf_counter() - start)
    return shop.search_traffic(
        pool,
        lambda q, k: (ranked[q][0][:k], ranked[q][1][:k]),
        n_requests,
        seed,
        EPOCH,
        EPOCH + 7 * DAY_S,
        params.data.search.relevance,
        shop.Shopper(swap_share=0.2, model_version="bm25"),
    )


def recommend_traffic(params: Params, work: Paths, n_visits: int, seed: int):
    """Simulated visits in the 60 days before the selection fold's cutoff (see the module docstring)."""
    from components.feedback import shop
    from components.rec_baselines import baseline_rankings, build_interactions, prepare_events
    from pipelines.io import read_fold

    folds = json.loads((work.split / "recommend" / "folds.json").read_text())
    sel_cut = pd.Timestamp(folds["valid"]["cutoff"]) - pd.Timedelta(days=params.recommend.selection_window_days)
    begin = sel_cut - pd.Timedelta(days=60)
    history, _ = read_fold(work, "valid", window=False)
    events = prepare_events(history)
    before, during = events[events[s.TIMESTAMP] < begin], events[events[s.TIMESTAMP].between(begin, sel_cut)]
    during = during[during[s.TIMESTAMP] < sel_cut]
    truths = {u: set(g[s.PRODUCT_ID].astype(str)) for u, g in during.groupby(s.USER_ID)}
    inter = build_interactions(before)
    known = [u for u in truths if u in inter.user_index()]
    lists = baseline_rankings(inter, known, "own_frequency", 20) if known else {}
    popular = baseline_rankings(inter, [inter.users[0]], "popularity", 20)[inter.users[0]]

    def rank(user: str, k: int) -> list[str]:
        own = lists.get(user, [])
        return (own + [p for p in popular if p not in set(own)])[:k]

    # The visit's events are stamped up to a minute after it: end an hour before the cutoff.
    return shop.recommend_traffic(
        truths,
        rank,
        n_visits,
        seed + 1,
        begin.timestamp(),
        sel_cut.timestamp() - 3600.0,
        shop.Shopper(k=20, swap_share=0.2, model_version="own_frequency"),
    )


def run_arm(args, raw: dict, source: Paths, work: Paths) -> dict:
    """One arm in its own outputs root: train (with the switch on for `with`: after simulating the
    traffic and running implicit_judgments there), evaluate; returns what it logged."""
    from artifacts.feedback_store import FeedbackStore
    from components.feedback import shop

    on = args.arm == "with"
    os.environ["HATCHERY_HOME"] = str(work.root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work.root / 'mlflow.db'}"
    os.environ.pop("HATCHERY_STATE_URL", None)  # the work root's own SQLite store
    link_inputs(source, work, args.domains)
    params = {d: with_switch(raw, d, on) for d in args.domains}
    record: dict[str, Any] = {"arm": args.arm, "work_root": str(work.root), "seed": args.seed}
    if "search" in args.domains:
        from pipelines import build_index, train_encoder

        t = time.perf_counter()
        if args.models_from:  # the encoder and index of another root (the arms share them: no switch there)
            for rel in ("models/search/encoder", "models/search/index"):
                (work.root / rel).symlink_to((Path(args.models_from) / rel).resolve(), target_is_directory=True)
        else:
            train_encoder.run(params["search"], work, progress=False)
            build_index.run(params["search"], work)
        record["search_encoder_index_s"] = round(time.perf_counter() - t, 1)
    if on:
        from pipelines import implicit_judgments

        store = FeedbackStore(paths=work)
        for d in args.domains:
            if d == "search":
                traffic = search_traffic(params[d], work, args.search_queries, args.search_requests, args.seed)
            else:
                traffic = recommend_traffic(params[d], work, args.recommend_visits, args.seed)
            imps, events = shop.to_records(traffic)
            for i in range(0, len(imps), 2000):
                store.append_many(imps[i : i + 2000], [])
            store.append_many([], events)
            record[f"{d}_traffic"] = {
                "requests": len(imps),
                "events": traffic.feedback[shop.rec.EVENT].value_counts().to_dict(),
            }
        record["implicit_judgments"] = implicit_judgments.run(parse_params(raw), work)
    for d in args.domains:
        _, _, secs = train_and_evaluate(d, params[d], work)
        record[f"{d}_train_eval_s"] = round(secs, 1)
    write_json(work.root / "arm.json", record)
    return record


def compare(domains: list[str], without: Paths, with_: Paths, source: Paths) -> dict:
    """Both arms' primary metrics side by side, the paired difference; merged into metrics/feedback.json."""
    from components.metrics import paired_bootstrap

    out: dict[str, Any] = {}
    results: dict[str, Any] = {}
    with_arm = json.loads((with_.root / "arm.json").read_text()) if (with_.root / "arm.json").exists() else {}
    for d in domains:
        model, metric = PRIMARY[d]
        summary_0, units_0 = primary_of(without, d)
        summary_1, units_1 = primary_of(with_, d)
        paired = units_0.merge(units_1, on="unit", suffixes=("_without", "_with"))
        if len(paired) != len(units_0) or len(paired) != len(units_1):
            raise ValueError(f"{d}: the two arms were evaluated on different test units")
        col = s.unit_column(model, metric)
        diff, ci, p = paired_bootstrap(paired[f"{col}_with"], paired[f"{col}_without"], 1000, 0)
        key = f"{d}_{metric}"
        out.update(
            {
                f"{key}_without_feedback": round(summary_0[metric], 4),
                f"{key}_without_feedback_ci": [round(x, 4) for x in summary_0[f"{metric}_ci"]],
                f"{key}_with_feedback": round(summary_1[metric], 4),
                f"{key}_with_feedback_ci": [round(x, 4) for x in summary_1[f"{metric}_ci"]],
                f"{key}_feedback_gain": round(diff, 4),
                f"{key}_feedback_gain_ci": [round(x, 4) for x in ci],
            }
        )
        results[d] = {
            "model": model,
            "metric": metric,
            "units": int(len(paired)),
            "without": summary_0,
            "with": summary_1,
            "gain": diff,
            "gain_ci": list(ci),
            "p_gain_le_0": p,
            "without_root": str(without.root),
            "with_root": str(with_.root),
            "with_arm": with_arm,
        }
        lo0, hi0 = summary_0[f"{metric}_ci"]
        lo1, hi1 = summary_1[f"{metric}_ci"]
        print(
            f"{d:9s} {model} {metric} over {len(paired)} test units: without feedback {summary_0[metric]:.4f} "
            f"[{lo0:.4f}, {hi0:.4f}]  with feedback {summary_1[metric]:.4f} [{lo1:.4f}, {hi1:.4f}]  "
            f"difference {diff:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]"
        )
    bench_file = source.bench("feedback_gain")  # per domain: a run of one domain keeps the other's record
    previous = json.loads(bench_file.read_text()) if bench_file.exists() else {}
    write_json(bench_file, {**previous, **results})
    merge_metrics(source.metrics / METRICS_FILE, out)
    return out


SNAPSHOT_MARK = ".feedback_gain_snapshot"


def snapshot_code(folder: Path) -> Path:
    """A copy of the code and params.yaml the whole benchmark runs from (marked as such)."""
    import shutil

    from artifacts.paths import REPO_ROOT

    for name in ("components", "artifacts", "pipelines", "bench"):
        shutil.copytree(REPO_ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO_ROOT / "params.yaml", folder / "params.yaml")
    (folder / SNAPSHOT_MARK).write_text(str(REPO_ROOT))
    return folder


def main() -> int:
    import subprocess
    import sys

    from pipelines.common import configure_logging

    configure_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", nargs="+", choices=["search", "recommend"], default=["search", "recommend"])
    ap.add_argument("--search-queries", type=int, default=3000)
    ap.add_argument("--search-requests", type=int, default=20000)
    ap.add_argument("--recommend-visits", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="outputs root (default: a new temporary folder; one per arm below it)")
    ap.add_argument("--arm", choices=["without", "with"], help="run one arm only, in --work")
    ap.add_argument("--models-from", help="an outputs root whose search encoder and index the arm reuses")
    ap.add_argument("--compare", nargs=2, metavar=("WITHOUT_ROOT", "WITH_ROOT"), help="only compare two arms")
    args = ap.parse_args()

    import yaml

    from artifacts.paths import REPO_ROOT

    source = Paths()
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    if "content_ranker" in raw.get("search", {}).get("ranker", {}):
        raw = apply_overrides(raw, {"search.ranker.content_ranker": False})  # not compared here: half the time
    if args.compare:
        out = compare(args.domains, Paths(root=Path(args.compare[0])), Paths(root=Path(args.compare[1])), source)
        print(json.dumps(out, indent=1))
        return 0
    root = Path(args.work or tempfile.mkdtemp(prefix="hatchery-feedback-gain-"))
    if args.arm:
        run_arm(args, raw, source, Paths(root=root))
        return 0
    if not (REPO_ROOT / SNAPSHOT_MARK).exists():
        # Both arms must run the same code: a shared working tree can change under a long run (a module
        # imported inside a step is read when the step gets there), so everything runs from a copy.
        code = snapshot_code(root / "code")
        env = {**os.environ, "HATCHERY_HOME": str(source.root)}
        argv = [sys.executable, "-m", "bench.feedback_gain", *sys.argv[1:]]
        if not args.work:
            argv += ["--work", str(root)]
        return subprocess.run(argv, cwd=code, env=env).returncode
    # Both arms side by side (each in its own root and process), then the comparison.
    if "search" in args.domains and not args.models_from:
        from pipelines import build_index, train_encoder

        shared = Paths(root=root / "shared")
        os.environ["HATCHERY_HOME"] = str(shared.root)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{shared.root / 'mlflow.db'}"
        link_inputs(source, shared, ["search"])
        params = parse_params(raw)
        train_encoder.run(params, shared, progress=False)
        build_index.run(params, shared)
        args.models_from = str(shared.root)
    common = [sys.executable, "-m", "bench.feedback_gain", "--domains", *args.domains, "--seed", str(args.seed)]
    common += ["--search-queries", str(args.search_queries), "--search-requests", str(args.search_requests)]
    common += ["--recommend-visits", str(args.recommend_visits)]
    if args.models_from:
        common += ["--models-from", args.models_from]
    env = {**os.environ, "HATCHERY_HOME": str(source.root)}  # each arm links the source's inputs itself
    arms = [
        subprocess.Popen([*common, "--arm", arm, "--work", str(root / arm)], env=env) for arm in ("without", "with")
    ]
    if any(p.wait() != 0 for p in arms):
        log.error("an arm failed: see its log above")
        return 1
    out = compare(args.domains, Paths(root=root / "without"), Paths(root=root / "with"), source)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

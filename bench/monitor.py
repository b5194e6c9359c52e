"""bench_monitor: the drift monitor's run time on a day of traffic, and whether it tells a shift from none.

    python -m bench.monitor [--rps 100] [--hours 24] [--seed 0] [--skip-cost] [--skip-detection]

1. Cost. A feedback store (SQLite, the embedded default) filled with `rps` x `hours` synthetic answers
   (8.64 million for a day at 100 requests/s: queries drawn from a Zipf pool of 20,000, two model
   versions, a click on 30 % of the answers and a purchase on 3 %), then one `pipelines.monitor.run` over
   that window against a synthetic training split, timed. The answers are stored without their item
   rows: the monitor reads the answers' headers and the events (`impressions(items=False)`), never the
   items, so they change the store's size, not what the monitor reads. Synthetic on purpose: this is a
   cost, not a quality number. Filling the store is timed apart and not counted.
2. Detection, on the real data. The split of the shipped datasets (params.yaml as it is; built in a
   temporary HATCHERY_HOME when data/split is absent) is the champion's training data; the simulated shop
   (components/feedback/shop.py, shoppers acting on the train judgments and purchase histories) sends
   2,000 searches and 2,000 recommendation visits without a shift and with one (search: the 200 commonest
   words of the training queries reworded, for every query; recommendations: half the visits from
   shoppers never seen and a tenth of the catalog's tail becoming attractive), each a fresh store and
   state, each monitored with the shipped charter's `monitor:` section.

Prints the numbers; merges into metrics/feedback.json: monitor_seconds_per_day_at_100rps (wall) and
monitor_cpu_seconds_per_day_at_100rps (the process's CPU time: what a quiet machine waits; wall time on a
loaded one follows the load), each scaled linearly to a day at 100 requests/s when run smaller (the
`scaled_to_day_at_100rps` flag says so), drift_detected_with_shift (every
domain's shifted traffic triggered on drift), triggered_without_shift (any unshifted traffic triggered),
and the details under `monitor`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from artifacts.files import read_json, write_json
from artifacts.paths import Paths

log = logging.getLogger(__name__)

DAY_S = 86_400.0
QUERY_POOL = 20_000
PRODUCTS = 50_000


def _vocabulary(rng: np.random.Generator, n: int = 3_000) -> np.ndarray:
    return np.array([f"w{i}" for i in range(n)])


def _queries(rng: np.random.Generator, n: int) -> list[str]:
    words = _vocabulary(rng)
    p = 1.0 / np.arange(1, len(words) + 1)
    lengths = rng.integers(1, 6, size=n)
    drawn = rng.choice(len(words), size=int(lengths.sum()), p=p / p.sum())
    out, i = [], 0
    for k in lengths:
        out.append(" ".join(words[drawn[i : i + k]]))
        i += k
    return out


def _zipf(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1)
    return rng.choice(n, size=size, p=p / p.sum())


def write_synthetic_split(paths: Paths, seed: int) -> None:
    """A search training split shaped like the real one: train/valid judgments over the synthetic pools."""
    rng = np.random.default_rng(seed)
    folder = paths.split / "search"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 8_000), ("valid", 1_000)):
        queries = _queries(rng, n)
        rows = [(f"{name}{i}", q, f"p{p}", 2.0) for i, q in enumerate(queries) for p in _zipf(rng, PRODUCTS, 7)]
        pd.DataFrame(rows, columns=["query_id", "query", "product_id", "relevance"]).to_parquet(
            folder / f"{name}.parquet", index=False
        )


def fill_store(store, start: float, seconds: float, rps: float, seed: int, batch: int = 50_000) -> int:
    """`rps` x `seconds` synthetic search answers from `start`, with clicks and purchases; returns the count."""
    rng = np.random.default_rng(seed)
    pool = _queries(rng, QUERY_POOL)
    n = int(rps * seconds)
    done = 0
    while done < n:
        m = min(batch, n - done)
        ts = start + (done + np.arange(m)) / rps
        qi = _zipf(rng, QUERY_POOL, m)
        version = np.where(rng.random(m) < 0.05, "2", "1")
        answers, events = [], []
        clicks = rng.random(m)
        products = _zipf(rng, PRODUCTS, m)
        for j in range(m):
            rid = f"{done + j:032x}"
            answers.append(
                {"request_id": rid, "ts": float(ts[j]), "domain": "search", "endpoint": "search",
                 "model_version": str(version[j]), "arm": "champion", "unit": f"s{(done + j) // 3}",
                 "query": pool[qi[j]], "user": None, "items": []}
            )  # fmt: skip
            for event, share in (("click", 0.30), ("purchase", 0.03)):
                if clicks[j] < share:
                    t = float(ts[j]) + 5.0
                    events.append(
                        {"request_id": rid, "domain": "search", "event": event, "product_id": f"p{products[j]}",
                         "position": 1 + int(products[j] % 10), "ts": t, "received_ts": t,
                         "unit": f"s{(done + j) // 3}"}
                    )  # fmt: skip
        store.append_many(answers, events)
        done += m
    return n


def store_traffic(store, traffic) -> None:
    """The simulated shop's frames (one row per shown item, components/feedback/shop.py) into a feedback store,
    as the service would have written them: one Impression per answer, then its events."""
    from components.feedback import records as rec

    head = list(rec.IMPRESSION_COLUMNS[:9])
    answers = []
    for _rid, part in traffic.impressions.groupby(rec.REQUEST_ID, sort=False):
        first = part.iloc[0]
        answer = {c: (None if pd.isna(first[c]) else first[c]) for c in head}
        answer[rec.ITEMS] = [
            {"product_id": p, rec.POSITION: int(pos), rec.SCORE: None, rec.FEATURES: {}}
            for p, pos in zip(part["product_id"], part[rec.POSITION], strict=True)
        ]
        answers.append(answer)
    store.append_many(answers, traffic.feedback.to_dict("records"))


def cost(rps: float, hours: float, seed: int) -> dict:
    from artifacts.feedback_store import FeedbackStore
    from pipelines import monitor
    from pipelines.common import load_params
    from pipelines.requirements import load_charter

    with tempfile.TemporaryDirectory(prefix="bench_monitor_") as tmp:
        paths = Paths(root=Path(tmp))
        tracking = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = tracking
        _register_champion(tracking)  # with no champion the monitor has nothing to compare and skips the checks
        write_synthetic_split(paths, seed)
        store = FeedbackStore(path=paths.root / "feedback.sqlite", retention_s=1e12, max_bytes=1 << 50)
        seconds = hours * 3600.0
        end = float(int(time.time() + seconds + 60))  # the window starts after the champion's registration
        t0 = time.perf_counter()
        n = fill_store(store, end - seconds, seconds, rps, seed)
        fill_s = time.perf_counter() - t0
        charter = load_charter("semantic_search")
        plan = charter.monitor.model_copy(update={"window_hours": hours})
        charter = charter.model_copy(update={"monitor": plan})
        # Warm-up on an empty window: the imports and the MLflow registry's first connection are a fixed cost
        # of any run (measured apart), not of the traffic.
        t0 = time.perf_counter()
        empty = charter.model_copy(update={"monitor": plan.model_copy(update={"window_hours": 1e-6})})
        monitor.run(load_params(), paths, empty, now=end - seconds - 10, store=store, log_mlflow=False)
        warm_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        report = monitor.run(load_params(), paths, charter, now=end, store=store, log_mlflow=False)
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        size = store.size_bytes()
    scale = (100.0 * DAY_S) / n
    return {
        "requests": n,
        "rps": rps,
        "hours": hours,
        "fill_seconds": round(fill_s, 1),
        "store_mib": round(size / 2**20, 1),
        "fixed_seconds": round(warm_s, 1),
        "monitor_seconds": round(took, 2),
        "monitor_cpu_seconds": round(cpu, 2),
        "load_average": round(os.getloadavg()[0], 1),
        "scaled_to_day_at_100rps": scale != 1.0,
        "monitor_seconds_per_day_at_100rps": round(took * scale, 1),
        "monitor_cpu_seconds_per_day_at_100rps": round(cpu * scale, 1),
        "sampled_requests": report["sampled_requests"],
        "feedback_events": report["feedback_events"],
    }


# --- detection on the real data -------------------------------------------------------------------------
def real_split(home: Path) -> Paths:
    """data/split of the repository when it is there, else built from the shipped datasets into `home`."""
    repo = Paths()
    if (repo.split / "search" / "train.parquet").exists() and (repo.split / "recommend" / "test").exists():
        return repo
    from pipelines import ingest, split, validate
    from pipelines.common import load_params

    paths = Paths(root=home)
    params = load_params()
    ingest.run(params, paths)
    validate.run(params, paths)
    split.run(params, paths)
    return paths


def _register_champion(tracking: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking, registry_uri=tracking)
    for name in ("hatchery-search", "hatchery-recommend"):
        client.create_registered_model(name)
        client.create_model_version(name, source=tracking, run_id=None)
        client.set_registered_model_alias(name, "champion", "1")


def _monitored(data: Paths, home: Path, charter_name: str, traffic, now: float) -> dict:
    from artifacts.feedback_store import FeedbackStore
    from pipelines import monitor
    from pipelines.common import load_params
    from pipelines.requirements import load_charter

    home.mkdir(parents=True, exist_ok=True)
    store = FeedbackStore(path=home / "feedback.sqlite")
    store_traffic(store, traffic)
    charter = load_charter(charter_name)
    report = monitor.run(load_params(), Paths(root=home), charter, now=now, store=store, data=data, log_mlflow=False)
    return {
        "trigger": report["decision"]["trigger"],
        "reason": report["decision"]["reason"],
        "breached": [c["name"] for c in report["checks"] if c["breached"]],
        "values": {c["name"]: c["value"] for c in report["checks"]},
        "baselines": {c["name"]: c["baseline"] for c in report["checks"] if c["baseline"] is not None},
    }


def detection(seed: int, n: int = 2_000) -> dict:
    from components.feedback import shop
    from pipelines.common import load_params

    params = load_params()
    now = 2_000_000_000.0  # after the champion's registration, so the feedback count starts before the window
    with tempfile.TemporaryDirectory(prefix="bench_monitor_real_") as tmp:
        root = Path(tmp)
        tracking = f"sqlite:///{root / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = tracking
        data = real_split(root / "home")
        _register_champion(tracking)
        train = pd.read_parquet(data.split / "search" / "train.parquet")
        judged = {q: list(g.sort_values("relevance", ascending=False)["product_id"]) for q, g in train.groupby("query")}
        filler = list(train["product_id"].value_counts().index[:10])
        tokens = Counter(t for q in train["query"].drop_duplicates() for t in q.split())
        reword = {w: f"{w}zq" for w, _ in tokens.most_common(200)}
        history = pd.read_parquet(data.split / "recommend" / "test" / "history.parquet")
        truths = {u: set(g["product_id"]) for u, g in history.groupby("user_id")}
        counts = history["product_id"].value_counts()
        popular, tail = list(counts.index[:20]), list(counts.index[-max(1, len(counts) // 10) :])

        def search_rank(q: str, k: int) -> list[str]:
            return (judged.get(q, []) + filler)[:k]

        def recommend_rank(u: str, k: int) -> list[str]:
            return (sorted(truths.get(u, ())) + popular)[:k]

        out = {}
        for shifted in (False, True):
            tag = "with_shift" if shifted else "without_shift"
            start, end = now - 3600.0, now - 60.0
            searches = shop.search_traffic(
                train, search_rank, n, seed, start, end, params.data.search.relevance,
                reword=reword, shift=1.0 if shifted else 0.0,
            )  # fmt: skip
            visits = shop.recommend_traffic(
                truths, recommend_rank, n, seed, start, end,
                shift_items=tail if shifted else (), shift=0.3 if shifted else 0.0,
                new_user_share=0.5 if shifted else 0.0,
            )  # fmt: skip
            out[f"search_{tag}"] = _monitored(data, root / f"s_{tag}", "semantic_search", searches, now)
            out[f"recommend_{tag}"] = _monitored(data, root / f"r_{tag}", "personalised_recommendations", visits, now)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rps", type=float, default=100.0)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-detection", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = Paths()
    out_file = paths.metrics / "feedback.json"
    metrics = read_json(out_file) if out_file.exists() else {}
    section = dict(metrics.get("monitor") or {})
    if not args.skip_cost:
        c = cost(args.rps, args.hours, args.seed)
        print(
            f"monitor on {c['requests']:,} requests ({c['hours']:g} h at {c['rps']:g}/s, {c['feedback_events']:,} "
            f"events, store {c['store_mib']} MiB, filled in {c['fill_seconds']} s): {c['monitor_seconds']} s wall, "
            f"{c['monitor_cpu_seconds']} s CPU (+ {c['fixed_seconds']} s fixed start-up; load average "
            f"{c['load_average']})"
        )
        if c["scaled_to_day_at_100rps"]:
            print(
                f"scaled linearly to a day at 100/s: {c['monitor_seconds_per_day_at_100rps']} s wall, "
                f"{c['monitor_cpu_seconds_per_day_at_100rps']} s CPU"
            )
        section["cost"] = c
        metrics["monitor_seconds_per_day_at_100rps"] = c["monitor_seconds_per_day_at_100rps"]
        # Wall time follows the machine's load; the process's CPU time is what a quiet machine would wait.
        metrics["monitor_cpu_seconds_per_day_at_100rps"] = c["monitor_cpu_seconds_per_day_at_100rps"]
    if not args.skip_detection:
        d = detection(args.seed)
        for key, r in d.items():
            print(f"{key:26s} trigger={r['trigger']!s:5s} {r['reason']}")
        section["detection"] = d
        metrics["drift_detected_with_shift"] = all(
            d[k]["trigger"] and d[k]["reason"].startswith("drift") for k in d if k.endswith("_with_shift")
        )
        metrics["triggered_without_shift"] = any(d[k]["trigger"] for k in d if k.endswith("_without_shift"))
    metrics["monitor"] = section
    # Other benchmarks write other keys of this file: re-read right before writing, and merge only ours.
    ours = (
        "monitor",
        "monitor_seconds_per_day_at_100rps",
        "monitor_cpu_seconds_per_day_at_100rps",
        "drift_detected_with_shift",
        "triggered_without_shift",
    )
    latest = read_json(out_file) if out_file.exists() else {}
    latest.update({k: metrics[k] for k in ours if k in metrics})
    write_json(out_file, latest)
    print(json.dumps({k: latest[k] for k in ours[1:] if k in latest}))


if __name__ == "__main__":
    main()

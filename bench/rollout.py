"""bench_rollout: the rollout's online statistics, measured in the replay simulator on the real search bundle.

    python -m bench.rollout [--runs 4000] [--seed 0]

1. The trained search bundle ranks every held-out test query twice: as shipped (hybrid retrieval +
   LightGBM re-rank) and with its fine-tuned encoder alone (exact cosine over the product tower,
   EVALUATION.md's `fine_tuned` baseline). The replay's click model (params rollout.click_model,
   pipelines/replay.py SearchReplay's judgments and gains) turns each top 10 into a click
   probability; their mean over the queries is each ranker's online success rate (CTR@10),
   cross-checked against 20,000 sessions through SearchReplay's own click code.
2. False rollback: an as-good challenger (the shipped ranker against itself) through the canary of
   charters/semantic_search.yaml (steps, holdback, interleaving share, false-rollback rate, smallest
   harm, power) with the replay's batch size, request scale and batch limit, `runs` times.
3. Detection: a challenger exactly the charter's smallest harm worse (each session shows the
   encoder's list instead of the shipped one with the probability that costs that much CTR).
4. Interleaving vs A/B: sessions each needs to detect the shipped-vs-encoder difference at the
   charter's false-rollback rate with 80 % power: the 80th percentile of the first detection over
   `runs` simulated experiments (A/B: half the sessions on each ranker; interleaving: every session
   one team-draft list), each test's mixture tuned to the difference it must find.

components/rollout/simulate.py says why drawing sessions from these rates is the replay exactly.
Prints the numbers and writes metrics/rollout.json (false_rollback_rate, false_rollback_target,
detection_rate, interleaving_vs_ab_sessions_ratio and the details).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time

import numpy as np

from artifacts.files import write_json
from artifacts.paths import Paths

log = logging.getLogger(__name__)

CHARTER = "semantic_search"


def rankings(paths: Paths, click_model: str, k: int = 10):
    """(the replay's source, shipped top-k ids, encoder-only top-k ids, per-query gains) for its test queries."""
    from artifacts.bundles import load_bundle
    from pipelines.replay import SearchReplay

    source = SearchReplay.from_paths(paths, click_model=click_model, k=k)
    texts = [q for q, _ in source.queries]
    model = load_bundle("search", paths.bundle("search"))
    pid = model.product_ids.astype(str)
    q_embs = model.encode_queries(texts)
    shipped = [[str(pid[i]) for i in idx] for idx, _ in model.rank_queries(texts, k=k, q_embs=q_embs)]
    dense = model.embeddings @ q_embs.T  # (products, queries): the fine-tuned encoder alone
    encoder = []
    for j in range(len(texts)):
        col = dense[:, j]
        top = np.argpartition(-col, k)[:k]
        encoder.append([str(pid[i]) for i in top[np.lexsort((top, -col[top]))]])
    return source, shipped, encoder, [g for _, g in source.queries]


def success_rates(source, lists, gains, max_gain: float) -> np.ndarray:
    """Per query, P(at least one click in the top k) under the replay's click model."""
    from components import rollout as ro
    from components.rollout.simulate import list_success

    att = np.array(
        [
            [ro.attractiveness(g.get(i, 0.0), max_gain) for i in lst] + [0.0] * (source.k - len(lst))
            for lst, g in zip(lists, gains, strict=True)
        ]
    )
    return list_success(att, source.click_model)


def replayed_ctr(source, lists, sessions: int, seed: int) -> float:
    """CTR@10 of `sessions` sessions through the replay's own click code (SearchReplay.clicked)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(sessions):
        q = int(rng.integers(len(lists)))
        response = {"results": [{"product_id": i} for i in lists[q]]}
        hits += bool(source.clicked(response, source.queries[q][1], rng))
    return hits / sessions


def run(paths: Paths, runs: int = 4000, seed: int = 0) -> dict:
    from components import rollout as ro
    from components.rollout import simulate as sim
    from components.rollout.sequential import design
    from pipelines.common import load_params
    from pipelines.requirements import load_charter

    charter, rp = load_charter(CHARTER), load_params().rollout
    plan, q = charter.rollout, charter.rollout.quality
    t0 = time.perf_counter()
    source, shipped, encoder, gains = rankings(paths, rp.click_model)
    max_gain = source.scale.max_gain
    p_shipped = success_rates(source, shipped, gains, max_gain)
    p_encoder = success_rates(source, encoder, gains, max_gain)
    ctr_a, ctr_e = float(p_shipped.mean()), float(p_encoder.mean())
    check = replayed_ctr(source, shipped, 20_000, seed)
    rank_s = time.perf_counter() - t0

    d = design(q.false_rollback_rate, q.smallest_harm, q.power)
    steps = [
        sim.StepPlan(plan.ab_share(i), c.success.quality_test(), math.ceil(c.success.min_requests * rp.request_scale))
        for i, c in enumerate(plan.canary)
    ]
    first_quality = next(i for i, s in enumerate(steps) if s.test != "none")
    common = {
        "batch": rp.batch_requests,
        "max_batches": rp.max_batches,
        "runs": runs,
        "ab_fraction": 1 - plan.interleaving_share,
    }
    t1 = time.perf_counter()
    equal = sim.ab_rollouts(ctr_a, ctr_a, steps, d, seed=seed, **common)
    gap = ctr_a - ctr_e
    if gap < q.smallest_harm:
        raise RuntimeError(f"the encoder alone is only {gap:.4f} worse: it cannot make a {q.smallest_harm} harm")
    mix = q.smallest_harm / gap  # share of sessions shown the encoder's list instead
    harmed = sim.ab_rollouts(ctr_a, ctr_a - q.smallest_harm, steps, d, seed=seed + 1, **common)

    # Interleaving vs A/B on the shipped (champion) vs encoder-only (challenger) difference.
    p_win_champion, p_win_challenger = sim.interleaved_outcomes(
        shipped,
        encoder,
        [
            {i: ro.attractiveness(g.get(i, 0.0), max_gain) for i in set(a) | set(b)}
            for a, b, g in zip(shipped, encoder, gains, strict=True)
        ],
        model=source.click_model,
    )
    pref = p_win_challenger - p_win_champion
    d_ab = design(q.false_rollback_rate, gap, 0.8)
    d_il = design(q.false_rollback_rate, -pref, 0.8)
    cap = 2_000_000
    n_ab = sim.sessions_to_detect("ab", (ctr_a, ctr_e), d_ab, batch=50, max_sessions=cap, runs=runs, seed=seed + 2)
    n_il = sim.sessions_to_detect(
        "interleaving", (p_win_champion, p_win_challenger), d_il, batch=10, max_sessions=cap, runs=runs, seed=seed + 3
    )
    ab80, il80 = float(np.quantile(n_ab, 0.8)), float(np.quantile(n_il, 0.8))
    var_ab = 2 * (ctr_a * (1 - ctr_a) + ctr_e * (1 - ctr_e))
    var_il = p_win_champion + p_win_challenger - pref**2
    sim_s = time.perf_counter() - t1
    result = {
        "false_rollback_rate": equal.rate(sim.ROLLED_BACK),
        "false_rollback_target": q.false_rollback_rate,
        "detection_rate": harmed.rate(sim.ROLLED_BACK, first_quality),
        "detection_target": q.power,
        "interleaving_vs_ab_sessions_ratio": ab80 / il80,
        "details": {
            "charter": CHARTER,
            "runs": runs,
            "seed": seed,
            "click_model": source.click_model,
            "test_queries": len(shipped),
            "ctr_at_10": {"shipped_hybrid_ranker": ctr_a, "fine_tuned_encoder_alone": ctr_e},
            "ctr_at_10_replayed_20000_sessions": check,
            "design": d.to_dict(),
            "steps": [s.__dict__ for s in steps],
            "interleaving_share": plan.interleaving_share,
            "batch_requests": rp.batch_requests,
            "equal_challenger": equal.summary(),
            "harmed_challenger": {
                **harmed.summary(),
                "harm": q.smallest_harm,
                "encoder_list_share": mix,
                "rolled_back_any_step": harmed.rate(sim.ROLLED_BACK),
            },
            "sessions_to_detect_80pct": {
                "ab_50_50": ab80,
                "interleaving": il80,
                "ab_planned": d_ab.info_plan * var_ab,
                "interleaving_planned": d_il.info_plan * var_il,
                "ctr_difference": -gap,
                "interleaving_mean_credit": pref,
                "interleaving_win_probabilities": {"champion": p_win_champion, "challenger": p_win_challenger},
            },
            "seconds": {"rank": round(rank_s, 1), "simulate": round(sim_s, 1)},
        },
    }
    return result


def main() -> None:
    from pipelines.common import configure_logging

    configure_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = Paths()
    result = run(paths, args.runs, args.seed)
    write_json(paths.metrics / "rollout.json", result)
    det = result["details"]
    harm, ctr, n = det["harmed_challenger"], det["ctr_at_10"], det["sessions_to_detect_80pct"]
    print(
        f"false rollback of an as-good challenger: {result['false_rollback_rate']:.4f} "
        f"(target <= {result['false_rollback_target']:.4f}, {args.runs} simulated rollouts)\n"
        f"smallest harm ({harm['harm']}) caught in the first quality step: {result['detection_rate']:.4f} "
        f"(target >= {result['detection_target']:.2f}); in any step: {harm['rolled_back_any_step']:.4f}\n"
        f"CTR@10 shipped {ctr['shipped_hybrid_ranker']:.4f} vs encoder alone {ctr['fine_tuned_encoder_alone']:.4f} "
        f"(shipped, replayed: {det['ctr_at_10_replayed_20000_sessions']:.4f})\n"
        f"sessions to detect that difference (80 %): A/B {n['ab_50_50']:.0f}, interleaving {n['interleaving']:.0f}, "
        f"ratio {result['interleaving_vs_ab_sessions_ratio']:.1f}"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

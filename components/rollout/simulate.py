"""The rollout's decision rule over thousands of simulated rollouts at once (numpy, seeded): its error rates.

What is simulated is what the replay does: sessions drawn independently, each shown one arm's list
(or one interleaved list), clicks from the click model. The success of one A/B impression is then
Bernoulli(the arm's click-through rate averaged over the drawn queries), exactly, and one
interleaved session's credit is +1 / -1 / 0 with the probabilities averaged over queries and coin
flips, exactly; so a simulated phase draws binomial / multinomial batches with those rates, which
is what makes thousands of phases take seconds. bench/rollout.py computes the rates from real
bundles' rankings (`list_success`, `interleaved_outcomes`); the unit tests use hand-picked rates.

The step logic mirrors pipelines/rollout.py through components.rollout.guardrails: a step advances
when it has its challenger requests and the quality verdict (components.rollout.sequential.decide,
the same function) says advance; it rolls back on a rollback verdict at any look; a step still
undecided after max_batches is paused (the driver pauses it for a person).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import components.rollout.sequential as sq
from components.rollout.interleaving import CHALLENGER_TEAM, team_draft

FULL, ROLLED_BACK, PAUSED, RUNNING = 0, 1, 2, 3


@dataclass(frozen=True)
class StepPlan:
    """One canary step as the driver runs it.

    share: the challenger's share of the A/B units (after the holdback); test: "none" |
    "non_inferiority" | "superiority"; min_challenger: challenger requests it needs (the charter's
    min_requests x the replay's request_scale).
    """

    share: float
    test: str
    min_challenger: int


@dataclass(frozen=True)
class Simulated:
    """Per simulated rollout: outcome (FULL / ROLLED_BACK / PAUSED), the step it ended in, requests sent."""

    outcome: np.ndarray
    step: np.ndarray
    requests: np.ndarray

    def rate(self, outcome: int, step: int | None = None) -> float:
        hit = self.outcome == outcome
        if step is not None:
            hit &= self.step == step
        return float(hit.mean())

    def summary(self) -> dict[str, float]:
        return {
            "runs": int(len(self.outcome)),
            "full": self.rate(FULL),
            "rolled_back": self.rate(ROLLED_BACK),
            "paused": self.rate(PAUSED),
            "median_requests": float(np.median(self.requests)),
        }


def ab_rollouts(
    p_champion: float,
    p_challenger: float,
    steps: Sequence[StepPlan],
    d: sq.Design,
    batch: int,
    max_batches: int,
    runs: int,
    seed: int,
    ab_fraction: float = 1.0,
    min_impressions: int = sq.MIN_IMPRESSIONS,
) -> Simulated:
    """Simulate `runs` canaries of a challenger with online success rate p_challenger vs p_champion.

    batch: requests between two looks; ab_fraction: the part of them in the A/B split (the rest is
    interleaved). Every look applies sequential.decide to the steps pooled so far.
    """
    rng = np.random.default_rng(seed)
    n_steps = len(steps)
    shares = np.array([s.share for s in steps])
    need = np.array([s.min_challenger for s in steps])
    tests = [s.test for s in steps]
    outcome = np.full(runs, RUNNING)
    step = np.zeros(runs, dtype=int)
    requests = np.zeros(runs, dtype=np.int64)
    na, xa, nb, xb = (np.zeros(runs, dtype=np.int64) for _ in range(4))
    prev_s, prev_i = np.zeros(runs), np.zeros(runs)
    batches = np.zeros(runs, dtype=int)
    for _ in range(n_steps * max_batches):
        live = outcome == RUNNING
        if not live.any():
            break
        ab = rng.binomial(batch, ab_fraction, runs)
        to_b = rng.binomial(ab, shares[np.minimum(step, n_steps - 1)])
        to_a = ab - to_b
        live_i = live.astype(np.int64)
        nb += to_b * live_i
        na += to_a * live_i
        xb += rng.binomial(to_b, p_challenger) * live_i
        xa += rng.binomial(to_a, p_champion) * live_i
        requests += batch * live_i
        batches += live_i
        diff, info = sq.difference(na, xa, nb, xb)
        total_i = prev_i + info
        pooled = np.where(total_i > 0, (prev_s + info * diff) / np.where(total_i > 0, total_i, 1.0), 0.0)
        arm = np.minimum(na, nb)
        verdict = np.full(runs, -1)
        for t in set(tests) - {"none"}:
            mine = np.array([tests[k] == t for k in range(n_steps)])[np.minimum(step, n_steps - 1)]
            verdict = np.where(mine, sq.decide(t, pooled, total_i, arm, d, min_impressions), verdict)
        names = np.array(sq.VERDICTS + ("none",))
        label = names[np.where(verdict < 0, len(sq.VERDICTS), verdict)]
        back = live & np.isin(label, sq.ROLLBACK)
        go = live & ~back & (nb >= need[np.minimum(step, n_steps - 1)]) & np.isin(label, (*sq.ADVANCE, "none"))
        outcome[back] = ROLLED_BACK
        # advance: the step's data joins the pooled strata, counts restart for the next step
        prev_s = np.where(go, prev_s + info * diff, prev_s)
        prev_i = np.where(go, prev_i + info, prev_i)
        for arr in (na, xa, nb, xb):
            arr[go] = 0
        batches[go] = 0
        step = np.where(go, step + 1, step)
        outcome[go & (step >= n_steps)] = FULL
        stuck = (outcome == RUNNING) & (batches >= max_batches)
        outcome[stuck] = PAUSED
    return Simulated(outcome=outcome, step=np.minimum(step, n_steps - 1), requests=requests)


def sessions_to_detect(
    kind: str,
    rates: tuple[float, float],
    d: sq.Design,
    batch: int,
    max_sessions: int,
    runs: int,
    seed: int,
    share: float = 0.5,
) -> np.ndarray:
    """Per run, the sessions after which the always-valid test first says 'the challenger is worse' (inf: never).

    kind "ab": rates = (champion, challenger) success rates, a `share` of sessions on the challenger;
    kind "interleaving": rates = (P(champion team wins a session), P(challenger team wins)), every
    session interleaved. Detection: the interval's upper end below 0, at level d.alpha, checked
    every `batch` sessions.
    """
    rng = np.random.default_rng(seed)
    found = np.full(runs, np.inf)
    a1, a2, b1, b2 = (np.zeros(runs) for _ in range(4))
    seen = 0
    while seen < max_sessions and np.isinf(found).any():
        seen += batch
        if kind == "ab":
            to_b = rng.binomial(batch, share, runs)
            a1 += batch - to_b
            b1 += to_b
            a2 += rng.binomial(batch - to_b, rates[0])
            b2 += rng.binomial(to_b, rates[1])
            stat, info = sq.difference(a1, a2, b1, b2)
            enough = np.minimum(a1, b1) >= sq.MIN_IMPRESSIONS
        elif kind == "interleaving":
            draws = rng.multinomial(batch, [rates[1], rates[0], 1.0 - rates[0] - rates[1]], runs)
            b2 += draws[:, 0]  # challenger wins
            a2 += draws[:, 1]  # champion wins
            stat, info = sq.preference_statistic(b2, a2, np.full(runs, float(seen)))
            enough = np.full(runs, seen >= sq.MIN_IMPRESSIONS)
        else:
            raise ValueError(f"unknown kind {kind!r}: ab or interleaving")
        _, upper = sq.confidence_sequence(stat, info, d.alpha, d.rho)
        found = np.where(np.isinf(found) & enough & (upper < 0), seen, found)
    return found


# --- per-list click probabilities (what the replay's click model gives one list) -------------------------------
def examination(k: int, model: str, eta: float = 1.0) -> np.ndarray:
    """P(rank r is examined) before attractiveness: cascade handles it by stopping, pbm by 1/(r+1)^eta."""
    if model == "cascade":
        return np.ones(k)
    if model == "pbm":
        return 1.0 / (np.arange(k) + 1.0) ** eta
    raise ValueError(f"unknown click model {model!r}; expected cascade or pbm")


def list_success(attract: np.ndarray, model: str = "cascade", eta: float = 1.0) -> np.ndarray:
    """P(at least one click) per list; attract: (n lists, k) P(click | examined) per rank (0 past a list's end)."""
    a = np.asarray(attract, dtype=float)
    # cascade: a click at the first attractive rank; pbm: independent clicks; either way 1 - P(no click)
    return 1.0 - np.prod(1.0 - a * examination(a.shape[1], model, eta), axis=1)


def _team_win_probabilities(attract: np.ndarray, challenger: np.ndarray, model: str, eta: float) -> tuple[float, float]:
    """(P(champion team wins), P(challenger team wins)) of one interleaved list, exactly."""
    k = len(attract)
    if model == "cascade":  # one click at most: the first attractive rank
        reach = np.concatenate([[1.0], np.cumprod(1.0 - attract)[:-1]])
        first = attract * reach
        return float(first[~challenger].sum()), float(first[challenger].sum())
    # pbm: independent clicks; the distribution of (challenger clicks - champion clicks) by dynamic programming
    p = attract * examination(k, model, eta)
    dist = np.zeros(2 * k + 1)
    dist[k] = 1.0
    for r in range(k):
        step = 1 if challenger[r] else -1
        dist = dist * (1 - p[r]) + np.roll(dist, step) * p[r]
    return float(dist[:k].sum()), float(dist[k + 1 :].sum())


def interleaved_outcomes(
    champion_lists: Sequence[Sequence[str]],
    challenger_lists: Sequence[Sequence[str]],
    attract_of: Sequence[dict[str, float]],
    k: int = 10,
    model: str = "cascade",
    eta: float = 1.0,
) -> tuple[float, float]:
    """(P(champion team wins), P(challenger team wins)) of one interleaved session, averaged over the
    queries and over every coin sequence of team-draft (enumerated: 2^ceil(k/2) equally likely).

    attract_of: per query, product id -> P(click | examined) (absent: 0).
    """
    rounds = (k + 1) // 2
    flips = list(itertools.product((False, True), repeat=rounds))
    wins = np.zeros(2)
    for a_list, b_list, attract in zip(champion_lists, challenger_lists, attract_of, strict=True):
        for coins in flips:
            items, teams = team_draft(a_list, b_list, k, itertools.chain(coins, itertools.repeat(False)))
            att = np.array([attract.get(i, 0.0) for i in items] + [0.0] * (k - len(items)))
            chal = np.array([t == CHALLENGER_TEAM for t in teams] + [False] * (k - len(items)))
            wins += _team_win_probabilities(att, chal, model, eta)
    wins /= len(flips) * max(len(attract_of), 1)
    return float(wins[0]), float(wins[1])

"""Always-valid online quality tests: a confidence sequence on the difference of two success rates.

Which test, and why
    The rollout driver looks at the arms after every replayed batch and may stop at any look, so a
    fixed-horizon interval (or a z-test repeated at each look) would roll back an as-good challenger
    far more often than its nominal rate. We use a confidence sequence (CS): an interval that covers
    the true difference at *every* look at once with probability >= 1 - alpha, however many looks
    are taken and whenever we stop. Concretely it is the mixture sequential probability ratio test
    of Johari, Pekelis & Walsh ("Always valid inference: continuous monitoring of A/B tests",
    Operations Research 2022; Optimizely's engine), made one-sided with the half-normal mixture of
    Howard, Ramdas, McAuliffe & Sekhon ("Time-uniform, nonparametric, nonasymptotic confidence
    sequences", Annals of Statistics 2021, section 3.5). Chosen over alpha spending because the
    driver's looks are not planned in advance (batches, restarts, operator pauses) and a CS needs
    no look schedule; over a Bernoulli-exact (beta-binomial) mixture because the difference of two
    arms with unequal traffic shares has no exact conjugate form, while the Gaussian approximation
    of the difference is good from a few dozen impressions per arm (checked by the simulations in
    tests/unit/test_rollout_sequential.py and `python -m bench.rollout`).

The statistic
    Difference of success rates challenger - champion, diff = x_b/n_b - x_a/n_a, with information
    I = 1 / (s_a^2/n_a + s_b^2/n_b) (s^2 = p(1-p), p smoothed by half a success, so an arm with 0 or
    all successes still has a variance). In information time the score S = I (diff - true diff)
    moves like a Brownian motion; with a half-normal mixture of precision rho over the drift,
        M(S, I) = 2 sqrt(rho / (I + rho)) exp(S^2 / (2 (I + rho))) Phi(S / sqrt(I + rho))
    is a nonnegative martingale starting at 1 and increasing in S, so by Ville's inequality
    P(exists a look with S >= b(I)) <= alpha, where M(b(I), I) = 1/alpha. Hence
        lower = diff - b(I)/I,  upper = diff + b(I)/I
    are each valid at every look with probability >= 1 - alpha (together a 1 - 2 alpha CS).
    Canary steps are pooled by information (stratified: a trend common to both arms cancels):
        diff = sum_k I_k diff_k / sum_k I_k,  I = sum_k I_k.

The decisions (components.rollout.guardrails uses them; `decide` is vectorised for the simulator)
    harm          upper < 0: the challenger is worse. An as-good challenger reaches it with
                  probability <= alpha over the whole rollout: the charter's false-rollback rate.
    non_inferior  lower > -delta: a harm of delta (the charter's smallest harm) is excluded.
    no_harm       the information reached the planned I, sized so that a challenger exactly delta
                  worse is caught (upper < 0) with probability >= the charter's power.
    superior      lower > 0 (only asked for by a step with test: superiority).
    not_superior  superiority asked, planned information reached without it.
    continue      none of these yet.

Pure: numpy and scipy.special only, no clocks, no randomness here (the simulator takes a seed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import log_ndtr, ndtr, ndtri

Test = Literal["none", "non_inferiority", "superiority"]
Verdict = Literal["harm", "non_inferior", "no_harm", "superior", "not_superior", "continue", "too_few"]
# Decisions that end a quality check, and which way.
ADVANCE: tuple[str, ...] = ("non_inferior", "no_harm", "superior")
ROLLBACK: tuple[str, ...] = ("harm", "not_superior")
# The Gaussian approximation of a rate difference wants a few dozen impressions per arm before any verdict.
MIN_IMPRESSIONS = 30
# Codes of the vectorised `decide` (index into VERDICTS).
VERDICTS: tuple[str, ...] = ("continue", "harm", "non_inferior", "no_harm", "superior", "not_superior", "too_few")
_CODE = {v: i for i, v in enumerate(VERDICTS)}


# --- the boundary ----------------------------------------------------------------------------------------
def mixture_boundary(information, alpha: float, rho: float) -> np.ndarray:
    """b(I): the smallest score S with M(S, I) >= 1/alpha for the one-sided half-normal mixture.

    information: I >= 0 (scalar or array); alpha in (0, 0.5); rho > 0 (mixture precision, in the
    same units as I). Solves x^2/2 + log Phi(x) = log(1/alpha) - log 2 + log((I + rho)/rho)/2 for
    x = S / sqrt(I + rho) by Newton's method.
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    v = np.maximum(np.asarray(information, dtype=float), 0.0)
    c = math.log(1.0 / alpha) - math.log(2.0) + 0.5 * np.log1p(v / rho)
    # g(x) = x^2/2 + log Phi(x) is increasing and convex (g'' = 1 - Var of a truncated normal > 0), so
    # Newton from the right end of the bracket [sqrt(2c), sqrt(2(c + log 2))] descends monotonically.
    x = np.sqrt(2.0 * (c + math.log(2.0)))
    for _ in range(8):
        log_phi = log_ndtr(x)
        slope = x + np.exp(-0.5 * x * x - 0.5 * math.log(2.0 * math.pi) - log_phi)
        x = x - (0.5 * x * x + log_phi - c) / slope
    return x * np.sqrt(v + rho)


def two_sided_boundary(information, alpha: float, rho: float) -> np.ndarray:
    """Robbins' two-sided normal-mixture boundary sqrt((I + rho) log((I + rho)/(rho alpha^2))), for checks.

    The one-sided boundary at alpha lies between this one at 2 alpha and at alpha.
    """
    v = np.maximum(np.asarray(information, dtype=float), 0.0)
    return np.sqrt((v + rho) * (np.log1p(v / rho) + 2.0 * math.log(1.0 / alpha)))


def confidence_sequence(diff, information, alpha: float, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) of the always-valid interval on a difference of rates, each side at level alpha.

    Clipped to [-1, 1] (a difference of two rates); no information gives [-1, 1].
    """
    d = np.asarray(diff, dtype=float)
    v = np.asarray(information, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.where(v > 0, mixture_boundary(v, alpha, rho) / np.where(v > 0, v, 1.0), np.inf)
    return np.clip(d - half, -1.0, 1.0), np.clip(d + half, -1.0, 1.0)


# --- the statistic -----------------------------------------------------------------------------------------
def rate_variance(successes, n) -> np.ndarray:
    """p(1 - p) of a success rate with p smoothed by half a success: (x + 0.5) / (n + 1)."""
    p = (np.asarray(successes, dtype=float) + 0.5) / (np.asarray(n, dtype=float) + 1.0)
    return p * (1.0 - p)


def difference(n_a, x_a, n_b, x_b) -> tuple[np.ndarray, np.ndarray]:
    """(diff, information) of challenger b minus champion a; (0, 0) where an arm has no impressions."""
    n_a, x_a, n_b, x_b = (np.asarray(v, dtype=float) for v in (n_a, x_a, n_b, x_b))
    both = (n_a > 0) & (n_b > 0)
    sa, sb = np.where(both, n_a, 1.0), np.where(both, n_b, 1.0)
    diff = np.where(both, x_b / sb - x_a / sa, 0.0)
    var = rate_variance(x_a, sa) / sa + rate_variance(x_b, sb) / sb
    return diff, np.where(both, 1.0 / var, 0.0)


def pooled(parts: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(diff, information) of several strata (canary steps) pooled by information."""
    info = sum(i for _, i in parts)
    return (sum(d * i for d, i in parts) / info if info > 0 else 0.0), info


# --- the design ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Design:
    """The quality test a charter asks for: error rates, the smallest harm, and the sizes they imply.

    alpha: false-rollback rate (one side of the CS); delta: smallest harm to catch (absolute rate
    difference, > 0); power: probability of catching it; rho: mixture precision (chosen by
    `design`); info_plan: the information at which a delta-worse challenger is caught with `power`.
    """

    alpha: float
    delta: float
    power: float
    rho: float
    info_plan: float

    def power_at(self, information) -> np.ndarray:
        """P(upper < 0 at a look with this information | true diff = -delta): the power a phase had.

        The last look only (a lower bound: earlier looks only add chances to catch it).
        """
        v = np.maximum(np.asarray(information, dtype=float), 1e-12)
        return ndtr(self.delta * np.sqrt(v) - mixture_boundary(v, self.alpha, self.rho) / np.sqrt(v))

    def impressions(self, p_champion: float, p_challenger: float, share: float, information: float | None = None):
        """Impressions (both arms) for `information` (default: the plan) at a challenger share in (0, 1)."""
        info = self.info_plan if information is None else information
        if not 0.0 < share < 1.0:
            return math.inf
        var = p_champion * (1 - p_champion) / (1 - share) + p_challenger * (1 - p_challenger) / share
        return info * max(var, 1e-12)

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def _plan(delta: float, alpha: float, power: float, rho: float) -> float:
    """Smallest I with delta sqrt(I) - b(I)/sqrt(I) >= z_power (root in log I; the left side grows)."""
    from scipy.optimize import brentq

    z = float(ndtri(power))

    def gap(log_info: float) -> float:
        info = math.exp(log_info)
        return delta * math.sqrt(info) - float(mixture_boundary(info, alpha, rho)) / math.sqrt(info) - z

    lo, hi = math.log(1e-3 / delta**2), math.log(1e6 / delta**2)
    if gap(hi) < 0:
        raise ValueError(f"no sample size reaches power {power} for delta {delta} at alpha {alpha}")
    return math.exp(brentq(gap, lo, hi, xtol=1e-10))


@functools.lru_cache(maxsize=64)
def design(alpha: float, delta: float, power: float) -> Design:
    """The test for a charter's (false-rollback rate, smallest harm, power).

    rho is fixed before any data, from these three alone: the value on a grid (rho = m / delta^2)
    that needs the least information to reach the power, i.e. the mixture tuned to the harm it
    must catch.
    """
    if not 0.0 < alpha < 0.5 or not 0.0 < delta <= 1.0 or not 0.5 < power < 1.0:
        raise ValueError(f"need 0 < alpha < 0.5, 0 < delta <= 1, 0.5 < power < 1; got {alpha}, {delta}, {power}")
    best: tuple[float, float] | None = None
    for m in np.geomspace(0.05, 20.0, 25):
        rho = float(m) / delta**2
        info = _plan(delta, alpha, power, rho)
        if best is None or info < best[1]:
            best = (rho, info)
    return Design(alpha=alpha, delta=delta, power=power, rho=best[0], info_plan=best[1])


# --- one look ---------------------------------------------------------------------------------------------
def decide(
    test: str,
    diff,
    information,
    arm_impressions,
    d: Design,
    min_impressions: int = MIN_IMPRESSIONS,
) -> np.ndarray:
    """Verdict codes (index into VERDICTS) of looks; vectorised over arrays of looks.

    test: "non_inferiority" | "superiority"; diff, information: the pooled statistic so far;
    arm_impressions: the smaller arm's impressions in the current step (a step must measure both arms).
    """
    if test not in ("non_inferiority", "superiority"):
        raise ValueError(f"unknown quality test {test!r}")
    lower, upper = confidence_sequence(diff, information, d.alpha, d.rho)
    enough = np.asarray(arm_impressions) >= min_impressions
    planned = np.asarray(information) >= d.info_plan
    out = np.full(np.broadcast(lower, enough).shape, _CODE["continue"], dtype=np.int8)
    if test == "non_inferiority":
        out = np.where(planned, _CODE["no_harm"], out)
        out = np.where(lower > -d.delta, _CODE["non_inferior"], out)
    else:
        out = np.where(planned, _CODE["not_superior"], out)
        out = np.where(lower > 0, _CODE["superior"], out)
    out = np.where(upper < 0, _CODE["harm"], out)
    return np.where(enough, out, _CODE["too_few"]).astype(np.int8)


@dataclass(frozen=True)
class QualityLook:
    """One look of a rollout's online quality test, as the driver reports it."""

    test: str
    verdict: str
    diff: float
    lower: float
    upper: float
    confidence: float
    information: float
    info_plan: float
    power: float
    delta: float
    alpha: float
    champion_rate: float
    challenger_rate: float
    step_impressions: tuple[int, int]
    total_impressions: tuple[int, int]
    impressions_to_plan: float

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["step_impressions"] = list(self.step_impressions)
        out["total_impressions"] = list(self.total_impressions)
        return out

    def sentence(self) -> str:
        return (
            f"{self.test.replace('_', '-')} test: challenger - champion success rate {self.diff:+.4f}, "
            f"{self.confidence:.0%} always-valid interval [{self.lower:+.4f}, {self.upper:+.4f}] "
            f"(smallest harm {self.delta:.3f}), {sum(self.total_impressions)} impressions, "
            f"power {self.power:.0%} -> {self.verdict}"
        )


def look(
    test: str,
    steps: Sequence[tuple[int, int, int, int]],
    d: Design,
    share: float,
    min_impressions: int = MIN_IMPRESSIONS,
) -> QualityLook:
    """The quality test on the counts of every canary step so far, the current one last.

    steps: per step (champion impressions, champion successes, challenger impressions, challenger
    successes); share: the challenger's share of A/B traffic in the current step (for the estimate
    of how many impressions the plan still needs).
    """
    parts = [difference(*s) for s in steps]
    diff, info = pooled([(float(a), float(b)) for a, b in parts])
    cur = steps[-1] if steps else (0, 0, 0, 0)
    code = int(decide(test, diff, info, min(cur[0], cur[2]), d, min_impressions))
    lower, upper = confidence_sequence(diff, info, d.alpha, d.rho)
    na, xa = sum(s[0] for s in steps), sum(s[1] for s in steps)
    nb, xb = sum(s[2] for s in steps), sum(s[3] for s in steps)
    pa = xa / na if na else float("nan")
    pb = xb / nb if nb else float("nan")
    left = max(0.0, d.info_plan - info)
    need = d.impressions(pa if na else 0.5, pb if nb else 0.5, share, left) if left > 0 else 0.0
    return QualityLook(
        test=test,
        verdict=VERDICTS[code],
        diff=float(diff),
        lower=float(lower),
        upper=float(upper),
        confidence=1.0 - 2.0 * d.alpha,
        information=float(info),
        info_plan=d.info_plan,
        power=float(d.power_at(info)) if info > 0 else 0.0,
        delta=d.delta,
        alpha=d.alpha,
        champion_rate=pa,
        challenger_rate=pb,
        step_impressions=(int(cur[0]), int(cur[2])),
        total_impressions=(int(na), int(nb)),
        impressions_to_plan=float(need),
    )


# --- interleaving --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preference:
    """Team-draft interleaving outcome: sessions won by each team, ties (incl. no click), the verdict."""

    sessions: int
    challenger_wins: int
    champion_wins: int
    mean: float
    lower: float
    upper: float
    verdict: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def preference_statistic(wins, losses, n) -> tuple[np.ndarray, np.ndarray]:
    """(mean, information) of per-session credit +1 (challenger won) / -1 (champion won) / 0 (tie)."""
    won, lost, n = (np.asarray(v, dtype=float) for v in (wins, losses, n))
    safe = np.where(n > 0, n, 1.0)
    mean = (won - lost) / safe
    # Smoothed like rate_variance: half a win and half a loss, so all-tie or one-sided samples keep a variance.
    var = (won + lost + 1.0) / (safe + 1.0) - ((won - lost) / (safe + 1.0)) ** 2
    return np.where(n > 0, mean, 0.0), np.where(n > 0, safe / np.maximum(var, 1e-12), 0.0)


def preference(wins: int, losses: int, sessions: int, alpha: float, rho: float) -> Preference:
    """The interleaving verdict: the always-valid interval on the mean credit (range [-1, 1])."""
    mean, info = preference_statistic(wins, losses, sessions)
    lower, upper = confidence_sequence(mean, info, alpha, rho)
    enough = sessions >= MIN_IMPRESSIONS
    verdict = (
        "challenger_preferred"
        if enough and lower > 0
        else "champion_preferred"
        if enough and upper < 0
        else "no_preference_yet"
    )
    return Preference(int(sessions), int(wins), int(losses), float(mean), float(lower), float(upper), verdict)

"""Validation gates: pure checks of a challenger against the champion and the charter's guardrails.

Every check returns a `Check` with pass/fail and the numbers behind it; a `GateReport` is the
whole decision. Inputs are per-unit arrays (one value per test query or user, NaN where the metric
skips the unit) aligned across models, so every comparison is paired over the same units.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from components.metrics import paired_bootstrap


@dataclass(frozen=True)
class Check:
    """One gate check. `value` is the measured number, `threshold` the limit it was held to."""

    name: str
    passed: bool
    value: float
    threshold: float
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)
    judged: bool = True  # False: reported only (e.g. a slice too small to judge)


@dataclass(frozen=True)
class GateReport:
    """The gate decision for one challenger: passes only when every judged check passes."""

    domain: str
    challenger: str
    champion: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks if c.judged)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.judged and not c.passed]

    def reason(self) -> str:
        """One line per failed check, or a pass statement."""
        if self.passed:
            return (
                f"{self.challenger} passed all {sum(c.judged for c in self.checks)} gate checks against {self.champion}"
            )
        return f"{self.challenger} failed the gate against {self.champion}: " + "; ".join(
            f"{c.name}: {c.detail}" for c in self.failures
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "challenger": self.challenger,
            "champion": self.champion,
            "passed": self.passed,
            "reason": self.reason(),
            "checks": [asdict(c) for c in self.checks],
        }


def _finite(x: float) -> bool:
    return bool(np.isfinite(x))


def improvement_check(
    challenger: Sequence[float],
    champion: Sequence[float],
    metric: str,
    min_improvement: float,
    confidence: float,
    resamples: int = 1000,
    seed: int = 0,
) -> Check:
    """Paired bootstrap test that mean(challenger - champion) exceeds `min_improvement`.

    Passes when the bootstrap probability that the mean difference is <= min_improvement is at
    most 1 - confidence, i.e. the one-sided `confidence` lower bound clears the required margin.
    The reported interval is the two-sided 95% interval of the plain difference.
    """
    a, b = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    diff, (lo, hi), _ = paired_bootstrap(a, b, resamples, seed)
    # Shifting the challenger by the margin turns "diff > margin" into the "> 0" test
    # paired_bootstrap answers; the same seed resamples the same units.
    _, _, p_margin = paired_bootstrap(a - min_improvement, b, resamples, seed)
    keep = ~(np.isnan(a) | np.isnan(b))
    units = int(keep.sum())
    passed = units > 0 and _finite(p_margin) and p_margin <= 1.0 - confidence
    detail = (
        f"{metric} {np.nanmean(a[keep]) if units else float('nan'):.4f} "
        f"vs {np.nanmean(b[keep]) if units else float('nan'):.4f}: "
        f"difference {diff:+.4f} (95% CI {lo:+.4f}..{hi:+.4f}, n={units}), "
        f"P(difference <= {min_improvement}) = {p_margin:.3f} {'<=' if passed else '>'} {1 - confidence:.3f}"
    )
    return Check(
        name=f"primary:{metric}",
        passed=bool(passed),
        value=float(diff),
        threshold=float(min_improvement),
        detail=detail,
        numbers={
            "challenger_mean": float(np.mean(a[keep])) if units else float("nan"),
            "champion_mean": float(np.mean(b[keep])) if units else float("nan"),
            "difference": float(diff),
            "ci95_low": lo,
            "ci95_high": hi,
            "p_not_better_by_margin": p_margin,
            "confidence": confidence,
            "units": units,
        },
    )


def slice_checks(
    challenger: Sequence[float],
    champion: Sequence[float],
    slices: Sequence[Any],
    column: str,
    max_drop: float,
    min_units: int,
) -> list[Check]:
    """One check per slice value: champion mean - challenger mean must be <= max_drop.

    Slices with fewer than `min_units` paired units are reported with judged=False.
    """
    a, b = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    labels = np.asarray(slices, dtype=object)
    if not (len(a) == len(b) == len(labels)):
        raise ValueError(f"slice inputs differ in length: {len(a)}, {len(b)}, {len(labels)}")
    keep = ~(np.isnan(a) | np.isnan(b))
    out = []
    for value in sorted({str(v) for v in labels[keep]}):
        mask = keep & (labels.astype(str) == value)
        n = int(mask.sum())
        ca, cb = float(a[mask].mean()), float(b[mask].mean())
        drop = cb - ca
        judged = n >= min_units
        passed = drop <= max_drop + 1e-12
        out.append(
            Check(
                name=f"slice:{column}={value}",
                passed=bool(passed),
                value=drop,
                threshold=max_drop,
                detail=f"{ca:.4f} vs champion {cb:.4f} (drop {drop:+.4f}, limit {max_drop}, n={n}"
                + ("" if judged else f" < {min_units}: not judged")
                + ")",
                numbers={"challenger_mean": ca, "champion_mean": cb, "drop": drop, "units": n},
                judged=judged,
            )
        )
    return out


def upper_limit_check(name: str, value: float, limit: float, unit: str = "") -> Check:
    """value must be <= limit (latency, size, concentration). A NaN value fails."""
    passed = _finite(value) and value <= limit
    return Check(name, bool(passed), float(value), float(limit), f"{value:.4g}{unit} (limit <= {limit:g}{unit})")


def lower_limit_check(name: str, value: float, limit: float, unit: str = "") -> Check:
    """value must be >= limit (coverage). A NaN value fails."""
    passed = _finite(value) and value >= limit
    return Check(name, bool(passed), float(value), float(limit), f"{value:.4g}{unit} (limit >= {limit:g}{unit})")


# --- guardrail measures ------------------------------------------------------------------------
def p99(latencies_ms: Sequence[float]) -> float:
    """99th percentile (linear interpolation) of request latencies; NaN for none."""
    v = np.asarray(latencies_ms, dtype=float)
    return float(np.percentile(v, 99)) if len(v) else float("nan")


def exposure_counts(top_k_lists: Iterable[Sequence[Any]], catalog: Sequence[Any]) -> np.ndarray:
    """How often each catalog product appears across the top-k lists (zeros included), catalog order."""
    index = {p: i for i, p in enumerate(catalog)}
    counts = np.zeros(len(index), dtype=float)
    for items in top_k_lists:
        for p in items:
            if p in index:
                counts[index[p]] += 1
    return counts


def coverage(counts: np.ndarray, slots: int) -> float:
    """Distinct products shown / the most that could be shown, min(catalog size, slots).

    Normalising by the slots makes the number comparable across benchmark sizes: 200 queries of
    top-10 can show at most 2,000 of 54,667 products.
    """
    reachable = min(len(counts), int(slots))
    return float((np.asarray(counts) > 0).sum() / reachable) if reachable > 0 else float("nan")


def gini(counts: np.ndarray) -> float:
    """Gini index of exposure over catalog products: 0 = everyone equally, -> 1 = one product."""
    x = np.sort(np.asarray(counts, dtype=float))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return float("nan")
    ranks = np.arange(1, n + 1)
    return float((2.0 * (ranks * x).sum()) / (n * total) - (n + 1.0) / n)


def top_share(counts: np.ndarray, fraction: float = 0.01, slots: int | None = None) -> float:
    """Share of all exposure slots taken by the most-exposed `fraction` of the reachable products.

    Reachable = min(catalog size, slots), as in `coverage`: counting the top 1% of a 54,667-product
    catalog over 200 top-10 lists would take 547 products for 2,000 slots, a share of at least 0.27
    for any ranking, so the guardrail would measure the benchmark's size, not concentration.
    Without `slots` the whole catalog is the base. Uniform exposure gives about `fraction`.
    """
    x = np.sort(np.asarray(counts, dtype=float))[::-1]
    total = x.sum()
    if len(x) == 0 or total <= 0:
        return float("nan")
    base = min(len(x), int(slots)) if slots is not None else len(x)
    top = max(1, int(np.ceil(fraction * base)))
    return float(x[:top].sum() / total)

"""Validation gates: pure checks of a challenger against the champion and the charter's guardrails.

Every check returns a `Check` with pass/fail and the numbers behind it; a `GateReport` is the
whole decision. Inputs are per-unit arrays (one value per test query or user, NaN where the metric
skips the unit) aligned across models, so every comparison is paired over the same units.

`decide` holds one challenger to a charter; `best_baseline`, `align_champion` and `is_already_champion`
choose what it is compared with. pipelines/gate.py does the reading, measuring and writing around them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from components import schema as s
from components.metrics import paired_bootstrap

if TYPE_CHECKING:
    from components.charter import Charter


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


# --- the decision -------------------------------------------------------------------------------
class GateFailed(RuntimeError):
    """The challenger did not pass, or cannot be gated; the message names each reason with its numbers."""


# The gate logs the per-unit values it gated under the model name `challenger`; when that version later
# serves, its values are read back from the same artifact (a `champion` column, when present, first).
CHALLENGER_MODEL, CHAMPION_MODEL = "challenger", "champion"
# A champion whose logged results share fewer of today's test units was evaluated on another split.
MIN_CHAMPION_OVERLAP = 0.9


@dataclass(frozen=True)
class UnitTable:
    """What the gate reads from one domain's per-unit table: the unit id its rows join on, the column whose
    values are the benchmark requests, and which models are baselines (EVALUATION.md's, plus untrained
    combinations of them; trained parts of the challenger are not)."""

    unit_id: str
    request: str
    baselines: tuple[str, ...]


UNIT_TABLES = {
    "search": UnitTable(s.QUERY_ID, s.QUERY, ("bm25", "zero_shot", "rrf_bm25_zero_shot")),
    "recommend": UnitTable(s.USER_ID, s.USER_ID, ("popularity", "own_frequency", "item_knn", "ease")),
}


def is_already_champion(
    version: str | None, champion_version: str, challenger: Sequence[float], champion: Sequence[float]
) -> bool:
    """The challenger is the serving champion: the same registered version (None: not registered) AND the same
    per-unit results as the champion's own gate (unchanged data and code). Gating it against itself would fail
    the primary test (difference 0) and turn a plain re-run red, so such a challenger is not gated."""
    if version is None or str(version) != str(champion_version):
        return False
    a, b = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, equal_nan=True))


def already_champion_report(domain: str, charter: str, model: str, version: str) -> dict[str, Any]:
    """The gate report of a challenger that is already the champion (is_already_champion): a pass, no checks."""
    reason = f"{model} v{version} is already the champion (same bundle): nothing to gate"
    return {
        "domain": domain,
        "charter": charter,
        "challenger": f"{model} v{version}",
        "champion": f"{model} v{version} (champion)",
        "passed": True,
        "already_champion": True,
        "reason": reason,
        "checks": [],
        "context": {"registered_model": model, "challenger_version": version},
        "mlflow_run_id": None,
    }


def best_baseline(per_unit: pd.DataFrame, metric: str, primary: str, baselines: Sequence[str]) -> str:
    """The baseline with the best mean `metric` over the units it scores, never the primary itself.

    Ties go to the later name in alphabetical order. Raises GateFailed when no baseline has a column.
    """
    models = s.models_with(per_unit.columns, metric)
    candidates = [m for m in baselines if m in models and m != primary]
    if not candidates:
        raise GateFailed(f"none of the baselines {list(baselines)} has a {metric} column (models: {models})")
    return max(candidates, key=lambda m: (np.nanmean(per_unit[s.unit_column(m, metric)].to_numpy(dtype=float)), m))


def align_champion(per_unit: pd.DataFrame, logged: pd.DataFrame, unit_id: str, metric: str, label: str) -> np.ndarray:
    """The champion's logged per-unit `metric` aligned to the rows of `per_unit` (NaN where it has none).

    logged: the per-unit table the champion's own gate logged (`unit_id` and a `champion__<metric>` or
    `challenger__<metric>` column). Raises GateFailed when it has no such column, or shares fewer than
    MIN_CHAMPION_OVERLAP of today's units: a paired comparison needs the same test split.
    """
    cols = [s.unit_column(m, metric) for m in (CHAMPION_MODEL, CHALLENGER_MODEL)]
    col = next((c for c in cols if c in logged), None)
    if col is None:
        raise GateFailed(f"{label}: its gate artifact has no {metric} column")
    joined = per_unit[[unit_id]].merge(logged[[unit_id, col]], on=unit_id, how="left")
    overlap = joined[col].notna().mean() if len(joined) else 0.0
    if overlap < MIN_CHAMPION_OVERLAP:
        raise GateFailed(
            f"{label} was evaluated on a different test split ({overlap:.0%} of today's test units match): "
            "re-evaluate the champion on the current split before gating"
        )
    return joined[col].to_numpy(dtype=float)


def guardrail_measures(
    latencies_ms: Sequence[float], top_k_lists: Sequence[Sequence[Any]], catalog: Sequence[Any], k: int
) -> dict[str, Any]:
    """The guardrail numbers of one benchmark: latency percentiles (ms), then coverage, Gini and top-1%
    share of the top-k lists over the slots they could fill (requests x k)."""
    slots = len(top_k_lists) * k
    counts = exposure_counts(top_k_lists, catalog)
    return {
        "requests": len(top_k_lists),
        "latency_p50_ms": float(np.percentile(latencies_ms, 50)) if len(latencies_ms) else float("nan"),
        "latency_p99_ms": p99(latencies_ms),
        "coverage": coverage(counts, slots),
        "gini": gini(counts),
        "top1_share": top_share(counts, 0.01, slots=slots),
        "catalog_size": len(catalog),
    }


def guardrail_checks(charter: Charter, measured: dict[str, Any]) -> list[Check]:
    """The charter's limits on the measured bundle: p99 latency, coverage@k, exposure, size on disk."""
    gr = charter.guardrails
    return [
        upper_limit_check("guardrail:latency_p99", measured["latency_p99_ms"], gr.latency_p99_ms, " ms"),
        lower_limit_check(f"guardrail:coverage@{gr.k}", measured["coverage"], gr.min_coverage),
        upper_limit_check(f"guardrail:exposure_{gr.exposure_measure}", measured[gr.exposure_measure], gr.max_exposure),
        upper_limit_check("guardrail:model_size", measured["size_mb"], gr.max_model_size_mb, " MiB"),
    ]


def metric_name(check: str) -> str:
    """A tracking-safe metric name for a check ("slice:query_length=4+" -> "slice.query_length.4plus")."""
    return re.sub(
        r"[^A-Za-z0-9_.\-/ ]", "_", check.replace("+", "plus").replace(":", ".").replace("=", ".").replace("@", "_at_")
    )


def decide(
    charter: Charter,
    per_unit: pd.DataFrame,
    primary: str,
    champion_label: str,
    champion: Sequence[float],
    measured: dict[str, Any],
    seed: int = 0,
) -> GateReport:
    """All checks of the challenger (per_unit column `<primary>__<metric>`) against champion values aligned
    to per_unit's rows: the primary improvement, every slice of the charter's slice columns (a column the
    table lacks fails), and the guardrails on `measured`."""
    pm = charter.primary_metric
    chall = per_unit[s.unit_column(primary, pm.name)].to_numpy(dtype=float)
    checks = [
        improvement_check(chall, champion, pm.name, pm.min_improvement, pm.confidence, pm.bootstrap_resamples, seed)
    ]
    rule = charter.slices
    for col in rule.columns:
        if col not in per_unit:
            missing = f"slice column {col!r} missing from the per-unit table"
            checks.append(Check(f"slice:{col}", False, float("nan"), rule.max_drop, missing))
            continue
        checks += slice_checks(
            chall, champion, per_unit[col].astype(str).to_numpy(), col, rule.max_drop, rule.min_units
        )
    checks += guardrail_checks(charter, measured)
    return GateReport(charter.domain, primary, champion_label, tuple(checks))

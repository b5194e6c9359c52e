"""The incubation charter: what a challenger must show before it may be rolled out.

One YAML file per incubation project (charters/*.yaml) names the objective, the primary metric and
the improvement it must show over the champion, slice tolerance, guardrails, the rollout plan, the
training budget and the DVC stages that train it. `parse_charter` validates a mapping and names
every offending field by its dotted path.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from components.config_base import Frozen, dotted_errors

Domain = Literal["search", "recommend"]

# Metrics the evaluation steps write per unit (per query / per user), by domain. A charter may only
# gate on a metric the per-unit table carries: anything else could not be tested paired.
UNIT_METRICS: dict[str, tuple[str, ...]] = {
    "search": ("ndcg_at_10", "recall_at_100"),
    "recommend": ("recall_at_20", "ndcg_at_20"),
}
# Slice columns of the per-unit tables (written by pipelines/evaluate_search.py and evaluate_recommend.py).
SLICE_COLUMNS: dict[str, tuple[str, ...]] = {
    "search": ("query_length", "head_tail"),
    "recommend": ("buyer_segment",),
}

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PrimaryMetric(Frozen):
    """The one number the challenger must improve, tested paired over the same test units.

    min_improvement: absolute (metric units, e.g. 0.01 NDCG) mean difference challenger - champion
    the lower end of the one-sided bootstrap interval must exceed.
    confidence: one-sided confidence of that interval, in (0.5, 1).
    """

    name: str
    min_improvement: float = Field(ge=0.0, le=1.0)
    confidence: float = Field(gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000)


class SliceRule(Frozen):
    """No slice may lose more than `max_drop` (absolute, primary metric) against the champion.

    Slices with fewer than `min_units` units are reported but not judged (too noisy to fail on).
    """

    columns: list[str] = Field(min_length=1)
    max_drop: float = Field(ge=0.0, le=1.0)
    min_units: int = Field(30, ge=1)


class Guardrails(Frozen):
    """Absolute limits on the challenger, measured on the packaged bundle.

    latency_p99_ms: p99 of single-request scoring time over `benchmark_requests` requests (ms).
    min_coverage: distinct products in the top-k lists of those requests / min(catalog, requests * k).
    exposure_measure / max_exposure: concentration of top-k exposure across catalog products,
    either the Gini index (0 = even, 1 = one product) or the share of slots taken by the top 1%.
    max_model_size_mb: the bundle on disk, MiB.
    """

    latency_p99_ms: float = Field(gt=0)
    benchmark_requests: int = Field(200, ge=10, le=100_000)
    k: int = Field(10, ge=1, le=1000)
    min_coverage: float = Field(ge=0.0, le=1.0)
    exposure_measure: Literal["gini", "top1_share"]
    max_exposure: float = Field(gt=0.0, le=1.0)
    max_model_size_mb: float = Field(gt=0)


class ExitCriteria(Frozen):
    """When a rollout phase may advance: enough traffic seen, no health limit crossed, the quality test passed.

    test: the online quality test of the step (components/rollout/sequential.py) on the arms'
    success rates, all canary steps so far pooled: "non_inferiority" (advance once a harm of
    rollout.quality.smallest_harm is excluded, or the planned sample showed no harm), "superiority"
    (advance only once the challenger is shown better), "none" (health only; the shadow phase,
    where the challenger answers no one). Unset: "none" for the shadow, "non_inferiority" for a
    canary step.
    min_primary_ratio: deprecated (a point-estimate ratio, a coin flip for an equal challenger);
    still accepted so old charters parse: 0 means test "none", anything else "non_inferiority".
    """

    min_requests: int = Field(ge=1)
    min_hours: float = Field(ge=0)
    max_error_rate: float = Field(ge=0.0, le=1.0)
    max_latency_p99_ms: float = Field(gt=0)
    test: Literal["none", "non_inferiority", "superiority"] | None = None
    min_primary_ratio: float | None = Field(None, ge=0.0, le=2.0)

    def quality_test(self, default: str = "non_inferiority") -> str:
        """The test this phase runs: `test`, else what the deprecated ratio implied, else `default`."""
        if self.test is not None:
            return self.test
        if self.min_primary_ratio is not None:
            return "none" if self.min_primary_ratio == 0 else "non_inferiority"
        return default


class ShadowPhase(Frozen):
    traffic_share: float = Field(gt=0.0, le=1.0)
    exit: ExitCriteria

    @model_validator(mode="after")
    def _no_quality_test(self) -> ShadowPhase:
        # An old charter's shadow min_primary_ratio is ignored (it could only ever roll back: no challenger
        # impressions); an explicit test is a mistake worth naming.
        if self.exit.test not in (None, "none"):
            raise ValueError("exit.test: the challenger answers no one in shadow, so it has no online quality to test")
        return self


class CanaryStep(Frozen):
    traffic_share: float = Field(gt=0.0, le=1.0)
    success: ExitCriteria


class QualityTest(Frozen):
    """The error rates of the canary's online quality test (components/rollout/sequential.py).

    false_rollback_rate: the largest acceptable probability of rolling back a challenger exactly as
    good as the champion, over the whole rollout however often the driver looks (alpha of an
    always-valid interval on challenger - champion success rate).
    smallest_harm: the drop of the online success rate (absolute: 0.05 = five points of
    click-through or hit rate) the canary must catch; a smaller drop may go unnoticed.
    power: the probability of catching a challenger `smallest_harm` worse in the first canary step
    that tests quality; it sizes that step's traffic.
    """

    false_rollback_rate: float = Field(0.05, gt=0.0, lt=0.5)
    smallest_harm: float = Field(0.05, gt=0.0, le=1.0)
    power: float = Field(0.8, gt=0.5, lt=1.0)


class RolloutPlan(Frozen):
    """Handed to the serving stage: shadow first, then canary steps of growing traffic share.

    holdback: the share of units the champion keeps at a step of traffic_share 1.0, so the last
    step still compares the arms (a 100 % step would leave the champion arm without data).
    interleaving_share: search only; in canary this share of units gets one team-draft interleaved
    list of both models, its verdict reported beside the A/B split's.
    """

    shadow: ShadowPhase
    canary: list[CanaryStep] = Field(min_length=1)
    quality: QualityTest = QualityTest()
    holdback: float = Field(0.05, ge=0.0, lt=0.5)
    interleaving_share: float = Field(0.0, ge=0.0, lt=0.5)

    @model_validator(mode="after")
    def _growing(self) -> RolloutPlan:
        shares = [c.traffic_share for c in self.canary]
        if any(b <= a for a, b in zip(shares, shares[1:], strict=False)):
            raise ValueError(f"canary traffic shares must strictly grow, got {shares}")
        for i, c in enumerate(self.canary):
            if c.success.quality_test() != "none" and self.ab_share(i) >= 1.0:
                raise ValueError(
                    f"canary[{i}] sends all traffic to the challenger and tests quality: the champion arm would "
                    "have no data. Set rollout.holdback > 0 or the step's test: none"
                )
        return self

    def ab_share(self, step: int) -> float:
        """The challenger's share of the A/B units at canary step `step`: its traffic share, the holdback kept."""
        return min(self.canary[step].traffic_share, 1.0 - self.holdback)


class TrainingBudget(Frozen):
    """Wall-clock budget of the training stages together: CPU minutes without a GPU, else GPU hours."""

    cpu_minutes: float = Field(gt=0)
    gpu_hours: float = Field(gt=0)


class DriftThresholds(Frozen):
    """Limits of the monitor's drift checks (components/drift.py), each on the excess over what a held-out,
    in-distribution sample (the valid split) shows against the same training data (its `baseline`).

    query_length_psi: population stability index of the query length (tokens, 1..10+) distribution.
    oov_rate: rise of the share of query tokens outside the training vocabulary (queries + catalog titles).
    embedding_alpha: the query-embedding two-sample test (MMD, permutation p-value) breaches below this.
    unseen_users / unseen_items: rise of the share of requests by users (of interactions with items) the
    training data never saw.
    popularity_psi: PSI of the interactions over reference-popularity buckets of the seen items.
    min_ctr / min_purchase_rate: floors of a model version's online click and purchase rates (requests with a
    click / a purchase); null: reported only.
    """

    query_length_psi: float = Field(0.2, gt=0)
    oov_rate: float = Field(0.1, gt=0, le=1)
    embedding_alpha: float = Field(0.01, gt=0, lt=0.5)
    unseen_users: float = Field(0.2, gt=0, le=1)
    unseen_items: float = Field(0.2, gt=0, le=1)
    popularity_psi: float = Field(0.25, gt=0)
    min_ctr: float | None = Field(None, ge=0, le=1)
    min_purchase_rate: float | None = Field(None, ge=0, le=1)


class MonitorPlan(Frozen):
    """What the feedback loop watches for this charter and when it asks for a new incubation.

    window_hours: the recent traffic the monitor compares with the champion's training data.
    min_requests: fewer requests in the window give no drift verdict (too noisy to act on).
    retrain_after_feedback: new feedback events (since the champion was registered) that trigger an
    incubation even without drift; 0 disables the count trigger.
    cooldown_hours: after a trigger, no new one for this long (the incubation it started needs time).
    sample_requests: requests sampled (seeded) for the query-embedding test, which is quadratic in it.
    permutations: of the embedding test's permutation p-value.
    """

    window_hours: float = Field(24.0, gt=0)
    min_requests: int = Field(200, ge=1)
    retrain_after_feedback: int = Field(50_000, ge=0)
    cooldown_hours: float = Field(24.0, ge=0)
    sample_requests: int = Field(400, ge=20, le=5000)
    permutations: int = Field(200, ge=20, le=10_000)
    thresholds: DriftThresholds = DriftThresholds()

    @model_validator(mode="after")
    def _test_can_fire(self) -> MonitorPlan:
        # A permutation p-value is never below 1 / (1 + permutations): a smaller alpha could never breach.
        if self.thresholds.embedding_alpha <= 1.0 / (1 + self.permutations):
            raise ValueError(
                f"thresholds.embedding_alpha {self.thresholds.embedding_alpha} can never be reached with "
                f"{self.permutations} permutations (smallest p-value 1/{1 + self.permutations}): raise permutations"
            )
        return self


class Charter(Frozen):
    """One incubation project, as written in charters/<name>.yaml."""

    name: str
    title: str = Field(min_length=1)
    objective: str = Field(min_length=10)
    domain: Domain
    registered_model: str = Field(min_length=1)
    primary_metric: PrimaryMetric
    slices: SliceRule
    guardrails: Guardrails
    rollout: RolloutPlan
    budget: TrainingBudget
    stages: list[str] = Field(min_length=1)
    owner: str = ""
    monitor: MonitorPlan = MonitorPlan()

    @model_validator(mode="after")
    def _consistent(self) -> Charter:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must be lower_snake_case")
        metrics = UNIT_METRICS[self.domain]
        if self.primary_metric.name not in metrics:
            raise ValueError(f"primary_metric.name {self.primary_metric.name!r} is not one of {list(metrics)}")
        unknown = sorted(set(self.slices.columns) - set(SLICE_COLUMNS[self.domain]))
        if unknown:
            raise ValueError(
                f"slices.columns {unknown} are not slices of {self.domain} (have {list(SLICE_COLUMNS[self.domain])})"
            )
        if self.rollout.interleaving_share > 0 and self.domain != "search":
            raise ValueError("rollout.interleaving_share: interleaving needs ranked search results (domain search)")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages lists a stage twice: {self.stages}")
        return self


class CharterError(ValueError):
    """A charter is invalid; the message names each offending field by its dotted path."""


def parse_charter(raw: dict[str, Any], source: str = "charter") -> Charter:
    """Validate a charter mapping; raise CharterError naming each bad field (`guardrails.k: ...`)."""
    if not isinstance(raw, dict):
        raise CharterError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Charter.model_validate(raw)
    except ValidationError as exc:
        raise CharterError(f"{source} is invalid:\n" + "\n".join(dotted_errors(exc, "unknown field"))) from None


def check_stages(charter: Charter, known_stages: list[str]) -> None:
    """Every stage the charter asks for must be a stage of dvc.yaml."""
    missing = [s for s in charter.stages if s not in known_stages]
    if missing:
        raise CharterError(
            f"charter {charter.name!r}: stages {missing} are not in dvc.yaml "
            f"(it has: {', '.join(known_stages) or 'none'})"
        )

"""Frozen, typed mirrors of params.yaml. Unknown keys are rejected with the key's dotted path."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from components.config_base import Frozen, dotted_errors
from components.config_recommend import RecommendParams
from components.config_rollout import RolloutParams
from components.config_search import SearchParams

# Where the shipped datasets sit (relative to the project root, as dvc.yaml reads them).
SHIPPED_PATHS = {"homedepot": "../shared/datasets/homedepot", "online_retail": "../shared/datasets/online_retail"}


class RelevanceScale(Frozen):
    """The judgment scale of the search data: every place that reads a grade reads it through this.

    The contract's value range, the gains of NDCG and of the ranker's labels, Recall@100's notion of
    relevant, the replay's click model and the query expansion all come from these four numbers.
    Defaults: EVALUATION.md's Home Depot scale (grades 1..3, gain = relevance - 1, relevant from 2.5).
    """

    min: float = 1.0  # the lowest grade: gain 0, like an unjudged product
    max: float = 3.0
    relevant_from: float = 2.5  # Recall@100 counts a product as relevant from this grade on
    # linear: gain = relevance - min (EVALUATION.md); exponential: 2^(relevance - min) - 1
    gain: Literal["linear", "exponential"] = "linear"

    @model_validator(mode="after")
    def _ordered(self) -> RelevanceScale:
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if not self.min <= self.relevant_from <= self.max:
            raise ValueError(f"relevant_from ({self.relevant_from}) must lie in [min, max] = [{self.min}, {self.max}]")
        return self

    def gain_of(self, relevance):
        """Gain of grades (a float, a numpy array or a pandas Series; same type back): 0 at `min`."""
        if self.gain == "linear":
            return relevance - self.min
        return 2.0 ** (relevance - self.min) - 1.0

    @property
    def max_gain(self) -> float:
        return float(self.gain_of(self.max))

    @property
    def relevant_gain(self) -> float:
        """The gain from which a product counts as relevant (the gain of `relevant_from`)."""
        return float(self.gain_of(self.relevant_from))

    def grade_at(self, share: float) -> float:
        """The grade `share` of the way up the scale (0 = min, 1 = max)."""
        return self.min + share * (self.max - self.min)


class SourceParams(Frozen):
    """Where one domain's data comes from.

    source: a built-in adapter over the shipped datasets, or "canonical" for a folder of Parquet/CSV
    files already in the canonical schema (bring your own data).
    path: the folder ingest reads and DVC tracks as its input (dvc.yaml: ${data.<domain>.path});
    relative to the project root or absolute. Built-in sources: the dataset's folder (or a folder
    holding it under its name); default ../shared/datasets/<source>.
    """

    source: Literal["homedepot", "online_retail", "canonical"]
    path: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shipped_path(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and not raw.get("path") and raw.get("source") in SHIPPED_PATHS:
            return {**raw, "path": SHIPPED_PATHS[raw["source"]]}
        return raw

    @model_validator(mode="after")
    def _canonical_needs_path(self) -> SourceParams:
        if self.source == "canonical" and not self.path:
            raise ValueError("source 'canonical' needs 'path': a folder with catalog/queries/judgments/events files")
        return self


class SearchSourceParams(SourceParams):
    relevance: RelevanceScale = RelevanceScale()


class RecommendSourceParams(SourceParams):
    """Plus the temporal split's cutoffs. null (both): the data's own last `split.recommend_window_days`
    days are the test window and the same number of days before them the validation window."""

    test_cutoff: datetime | None = None
    valid_cutoff: datetime | None = None

    @model_validator(mode="after")
    def _cutoffs(self) -> RecommendSourceParams:
        if (self.test_cutoff is None) != (self.valid_cutoff is None):
            raise ValueError("test_cutoff and valid_cutoff are both set or both null (null: from the data)")
        if self.test_cutoff and self.valid_cutoff >= self.test_cutoff:
            raise ValueError("valid_cutoff must be before test_cutoff")
        return self


class DataParams(Frozen):
    search: SearchSourceParams = SearchSourceParams(source="homedepot")
    # EVALUATION.md fixes Online Retail's cutoffs: T = 2011-11-09, T_valid = 2011-10-09.
    recommend: RecommendSourceParams = RecommendSourceParams(
        source="online_retail", test_cutoff=datetime(2011, 11, 9), valid_cutoff=datetime(2011, 10, 9)
    )


class PiiParams(Frozen):
    """What the contract does with e-mail addresses and phone numbers found in free text, per table.

    reject: the check fails and the run stops. redact: the matches are masked ([email], [phone]) in
    the published tables, counted and sampled in the report, and the run goes on.
    """

    queries: Literal["reject", "redact"] = "reject"  # what shoppers typed: personal data, stop
    catalog: Literal["reject", "redact"] = "redact"  # vendor contact lines in product text


_MOVED = {
    "relevance_min": "data.search.relevance.min",
    "relevance_max": "data.search.relevance.max",
    "relevance_mean_min": "checks.relevance_mean_band (shares of the scale)",
    "relevance_mean_max": "checks.relevance_mean_band (shares of the scale)",
    "recommend_test_cutoff": "data.recommend.test_cutoff",
    "recommend_valid_cutoff": "data.recommend.valid_cutoff",
}


def _moved_keys(raw: Any) -> Any:
    if isinstance(raw, dict) and (old := sorted(set(raw) & set(_MOVED))):
        raise ValueError("; ".join(f"{k} moved to {_MOVED[k]}" for k in old))
    return raw


class ChecksParams(Frozen):
    """Thresholds of the data contract checks (Great Expectations suites)."""

    min_products: int = Field(1, ge=1)
    min_queries: int = Field(1, ge=1)
    min_judgments: int = Field(1, ge=1)
    min_events: int = Field(1, ge=1)
    min_users: int = Field(1, ge=1)
    # Label sanity: the mean grade must lie in this part of the judgment scale (0 = its min, 1 = its
    # max); outside it the scale was likely misread. Home Depot's 1..3: [1.5, 2.9].
    relevance_mean_band: tuple[float, float] = (0.25, 0.95)
    pii: PiiParams = PiiParams()
    max_price: float = Field(1e6, gt=0)
    max_quantity: float = Field(1e6, gt=0)
    max_title_chars: int = Field(1000, ge=1)
    failed_rows_sample: int = Field(5, ge=1, le=100)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw: Any) -> Any:
        return _moved_keys(raw)

    @field_validator("pii", mode="before")
    @classmethod
    def _one_policy_for_all(cls, raw: Any) -> Any:
        return {"queries": raw, "catalog": raw} if isinstance(raw, str) else raw

    @field_validator("relevance_mean_band")
    @classmethod
    def _band(cls, band: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= band[0] < band[1] <= 1.0:
            raise ValueError(f"expected [low, high] with 0 <= low < high <= 1 (shares of the scale), got {list(band)}")
        return band


class SplitParams(Frozen):
    """EVALUATION.md's splits. Search: md5 bucket of the normalised query. Recommend: time cutoffs
    (data.recommend.test_cutoff / valid_cutoff; from the data when null)."""

    search_buckets: int = Field(10, ge=3)
    search_valid_buckets: list[int] = [8]
    search_test_buckets: list[int] = [9]
    recommend_window_days: int = Field(30, ge=1)  # test and validation windows when the cutoffs are null

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, raw: Any) -> Any:
        return _moved_keys(raw)

    @model_validator(mode="after")
    def _buckets_disjoint(self) -> SplitParams:
        valid, test = set(self.search_valid_buckets), set(self.search_test_buckets)
        if valid & test:
            raise ValueError(f"search_valid_buckets and search_test_buckets overlap: {sorted(valid & test)}")
        if not valid or not test or max(valid | test) >= self.search_buckets:
            raise ValueError("valid and test buckets must be non-empty and < search_buckets")
        return self


class Params(Frozen):
    seed: int = 0
    data: DataParams = DataParams()
    checks: ChecksParams = ChecksParams()
    split: SplitParams = SplitParams()
    search: SearchParams = SearchParams()
    recommend: RecommendParams = RecommendParams()
    rollout: RolloutParams = RolloutParams()


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names each offending key."""


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping, naming each bad key by its dotted path."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        raise ParamsError("invalid parameters:\n" + "\n".join(dotted_errors(exc))) from None


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of raw with dotted-key overrides applied ({"data.search.path": "/x"})."""
    import copy

    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override {dotted!r}: {key!r} is not a section")
        node[leaf] = value
    return out

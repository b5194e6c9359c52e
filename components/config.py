"""Frozen, typed mirrors of params.yaml. Unknown keys are rejected with the key's dotted path."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from components.config_base import Frozen, dotted_errors
from components.config_recommend import RecommendParams
from components.config_rollout import RolloutParams
from components.config_search import SearchParams


class SourceParams(Frozen):
    """Where one domain's data comes from.

    source: a built-in adapter over the shared real datasets, or "canonical" for a folder of
    Parquet/CSV files already in the canonical schema (bring your own data).
    path: folder for "canonical"; for the built-in adapters, a folder overriding HATCHERY_DATA_DIR.
    """

    source: Literal["homedepot", "online_retail", "canonical"]
    path: str | None = None

    @model_validator(mode="after")
    def _canonical_needs_path(self) -> SourceParams:
        if self.source == "canonical" and not self.path:
            raise ValueError("source 'canonical' needs 'path': a folder with catalog/queries/judgments/events files")
        return self


class DataParams(Frozen):
    search: SourceParams = SourceParams(source="homedepot")
    recommend: SourceParams = SourceParams(source="online_retail")


class ChecksParams(Frozen):
    """Thresholds of the data contract checks (Great Expectations suites)."""

    min_products: int = Field(1, ge=1)
    min_queries: int = Field(1, ge=1)
    min_judgments: int = Field(1, ge=1)
    min_events: int = Field(1, ge=1)
    min_users: int = Field(1, ge=1)
    relevance_min: float = 1.0
    relevance_max: float = 3.0
    # Label sanity: the mean label must sit inside this band, else the scale was likely misread.
    relevance_mean_min: float = 1.5
    relevance_mean_max: float = 2.9
    max_price: float = Field(1e6, gt=0)
    max_quantity: float = Field(1e6, gt=0)
    max_title_chars: int = Field(1000, ge=1)
    failed_rows_sample: int = Field(5, ge=1, le=100)


class SplitParams(Frozen):
    """EVALUATION.md's splits. Search: md5 bucket of the normalised query. Recommend: time cutoffs."""

    search_buckets: int = Field(10, ge=3)
    search_valid_buckets: list[int] = [8]
    search_test_buckets: list[int] = [9]
    # null: derived from the data (test = last 30 days, valid = the 31 days before), for BYOD.
    recommend_test_cutoff: datetime | None = datetime(2011, 11, 9)
    recommend_valid_cutoff: datetime | None = datetime(2011, 10, 9)

    @model_validator(mode="after")
    def _buckets_disjoint(self) -> SplitParams:
        valid, test = set(self.search_valid_buckets), set(self.search_test_buckets)
        if valid & test:
            raise ValueError(f"search_valid_buckets and search_test_buckets overlap: {sorted(valid & test)}")
        if not valid or not test or max(valid | test) >= self.search_buckets:
            raise ValueError("valid and test buckets must be non-empty and < search_buckets")
        if (self.recommend_test_cutoff is None) != (self.recommend_valid_cutoff is None):
            raise ValueError("recommend_test_cutoff and recommend_valid_cutoff are both set or both null")
        if self.recommend_test_cutoff and self.recommend_valid_cutoff >= self.recommend_test_cutoff:
            raise ValueError("recommend_valid_cutoff must be before recommend_test_cutoff")
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

"""What every typed config shares: the frozen base model, the error formatter, the LambdaRank knobs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Frozen(BaseModel):
    """Immutable, and an unknown key is an error (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def dotted_errors(exc: ValidationError, unknown: str = "unknown key") -> list[str]:
    """One line per error, "  a.b.c: message"; an extra key reads `unknown` instead of pydantic's text."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        what = unknown if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {where}: {what}")
    return lines


class LambdaRankParams(Frozen):
    """LightGBM LambdaRank hyper-parameters, shared by the search and recommendation re-rankers.

    The defaults are the search ranker's; the recommendation section overrides them.
    """

    num_leaves: int = Field(31, ge=2)
    learning_rate: float = Field(0.05, gt=0)
    n_estimators: int = Field(600, ge=1)  # boosting rounds before early stopping
    min_data_in_leaf: int = Field(50, ge=1)
    feature_fraction: float = Field(0.9, gt=0, le=1)
    early_stopping_rounds: int = Field(50, ge=1)
    # LightGBM's listwise objectives: lambdarank (pairwise swaps weighted by the NDCG change) or
    # rank_xendcg (a softmax cross-entropy over each list's relevance; faster per tree).
    objective: Literal["lambdarank", "rank_xendcg"] = "lambdarank"

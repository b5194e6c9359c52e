"""Typed mirror of params.yaml's `recommend` section (owned by the recommendation models)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RecommendParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

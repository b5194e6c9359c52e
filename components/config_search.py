"""Typed mirror of params.yaml's `search` section (owned by the search models)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SearchParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

"""MLflow models-from-code entry for the `hatchery-search` registered model (no pickled code).

MLflow runs this file at load time; the bundle folder travels as the model's `bundle` artifact.
Input: a DataFrame with a `query` column (and optional `k`); output: one row per result with
query, rank, product_id, title, score.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class SearchPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from pipelines.search_bundle import load_search_bundle

        self.model = load_search_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 10))
        rows = []
        for q in model_input["query"].astype(str):
            for rank, r in enumerate(self.model.search(q, k=k), start=1):
                rows.append({"query": q, "rank": rank, **r})
        return pd.DataFrame(rows, columns=["query", "rank", "product_id", "title", "score"])


mlflow.models.set_model(SearchPyfunc())

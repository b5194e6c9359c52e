"""MLflow models-from-code entry for `hatchery-recommend`: the bundle folder, served by RecommendModel.

MLflow executes this file when it loads the model (that is the models-from-code contract, hence the
module-level `set_model` call); nothing is pickled. Input: a frame with `user_id` (pseudonymised) and
optional `k` (default 10) and `exclude_purchased` (default False) per row. Output: one row per
recommendation: user_id, rank (1 = best), product_id, score, source ("ranker" or "popular").
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RecommendPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from pipelines.recommend_bundle import load_recommend_bundle

        self.model = load_recommend_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = []
        for rec in model_input.to_dict("records"):
            k = int(rec.get("k", 10) if pd.notna(rec.get("k", 10)) else 10)
            exclude = bool(rec.get("exclude_purchased", False))
            for rank, item in enumerate(self.model.recommend(str(rec["user_id"]), k, exclude), start=1):
                rows.append({"user_id": str(rec["user_id"]), "rank": rank, **item})
        return pd.DataFrame(rows, columns=["user_id", "rank", "product_id", "score", "source"])


mlflow.models.set_model(RecommendPyfunc())

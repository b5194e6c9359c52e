"""MLflow models-from-code entry of both registered models (`hatchery-search`, `hatchery-recommend`).

MLflow executes this file when it loads a model (the models-from-code contract, hence the module-level
`set_model`); nothing is pickled. The bundle folder travels as the model's `bundle` artifact and says
which domain it is. Input and output frames:
  search:    `query` (and params {"k"}) -> query, rank, product_id, title, score
  recommend: `user_id` (pseudonymised), optional `k` (default 10), `exclude_purchased` (default False)
             -> user_id, rank, product_id, score, source ("ranker" or "popular")
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class BundlePyfunc(PythonModel):
    def load_context(self, context) -> None:
        from artifacts.bundles import bundle_domain, load_bundle

        self.domain = bundle_domain(context.artifacts["bundle"])
        self.model = load_bundle(self.domain, context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if self.domain == "search":
            return self._search(model_input, int((params or {}).get("k", 10)))
        return self._recommend(model_input)

    def _search(self, model_input: pd.DataFrame, k: int) -> pd.DataFrame:
        rows = []
        for q in model_input["query"].astype(str):
            for rank, r in enumerate(self.model.search(q, k=k), start=1):
                rows.append({"query": q, "rank": rank, **r})
        return pd.DataFrame(rows, columns=["query", "rank", "product_id", "title", "score"])

    def _recommend(self, model_input: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for rec in model_input.to_dict("records"):
            k = int(rec.get("k", 10) if pd.notna(rec.get("k", 10)) else 10)
            exclude = bool(rec.get("exclude_purchased", False))
            for rank, item in enumerate(self.model.recommend(str(rec["user_id"]), k, exclude), start=1):
                rows.append({"user_id": str(rec["user_id"]), "rank": rank, **item})
        return pd.DataFrame(rows, columns=["user_id", "rank", "product_id", "score", "source"])


mlflow.models.set_model(BundlePyfunc())

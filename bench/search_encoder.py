"""The fine-tuned search encoder alone on VALID: full-catalog NDCG@10 for one or more training settings.

    python -m bench.search_encoder ['{"epochs": 2, "learning_rate": 1e-4}' ...]

Trains the encoder once per setting (JSON overrides of params.yaml's training profile in use; none:
params.yaml as is) exactly as pipelines.train_encoder does (same queries, seed, catalog pass), ranks
the whole catalog by cosine for every valid query and prints NDCG@10 and Recall@100 (EVALUATION.md),
beside BM25 and the pretrained encoder zero-shot, with the training and catalog-pass seconds. Decide
on these numbers, never on test. Needs the outputs of `dvc repro embed_catalog`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from artifacts.paths import Paths

log = logging.getLogger(__name__)


class ValidQueries:
    """The valid split's queries, judged gains and catalog: full-catalog metrics of a ranking of each."""

    def __init__(self, params, paths: Paths) -> None:
        import pandas as pd

        from components import schema as s
        from components.search_eval import judged_gains
        from pipelines.io import read_table

        self.params, self.scale = params, params.data.search.relevance
        valid = pd.read_parquet(paths.split / "search" / "valid.parquet")
        self.catalog = read_table(paths.validated / "search", s.CATALOG)
        self.pid = self.catalog[s.PRODUCT_ID].astype(str).to_numpy()
        self.gains = judged_gains(valid, self.scale)
        qframe = valid.groupby(s.QUERY_ID, sort=True)[s.QUERY].first()
        self.qids, self.texts = qframe.index.astype(str).tolist(), qframe.astype(str).tolist()

    def measure(self, ranked: list[np.ndarray]) -> dict:
        """Mean valid ndcg_at_10 and recall_at_100 of per-query catalog indices, best first."""
        from components.search_eval import full_catalog_metrics

        frame = full_catalog_metrics(self.qids, [self.pid[r] for r in ranked], self.gains, self.scale)
        return {k: round(float(frame[k].mean()), 4) for k in ("ndcg_at_10", "recall_at_100")}

    def measure_encoder(self, model, tokenizer, embeddings: np.ndarray) -> dict:
        """The metrics of a query tower's exact cosine ranking over the catalog's `embeddings`."""
        from components.ann import exact_search
        from components.encoder import encode_texts

        q = encode_texts(model, tokenizer, self.texts, 256, self.params.search.query_max_length)
        return self.measure(list(exact_search(embeddings, q, 100)[1]))


def encoder_ndcg(params, paths: Paths, settings: list[dict]) -> dict[str, dict]:
    """{"bm25": {...}, "zero_shot": {...}, <setting as JSON>: {...}}: valid ndcg_at_10, recall_at_100
    (and, for a setting, train_seconds, embed_seconds and training_queries)."""
    import torch

    from components import schema as s
    from components.bm25 import fit_bm25
    from components.config import parse_params
    from components.encoder import load_encoder
    from pipelines.train_encoder import fit

    sp = params.search
    valid = ValidQueries(params, paths)
    bm25 = fit_bm25(s.product_texts(valid.catalog, sp.text_fields), sp.bm25_k1, sp.bm25_b)
    out = {"bm25": valid.measure([np.argsort(-bm25.score(q), kind="stable")[:100] for q in valid.texts])}
    zs_model, zs_tok = load_encoder(sp.encoder)
    out["zero_shot"] = valid.measure_encoder(zs_model, zs_tok, np.load(paths.embeddings / "embeddings.npy"))
    raw = params.model_dump()
    for setting in settings:
        profiles = raw["search"]["profiles"]
        tuned = parse_params(  # a misspelt key is an error
            {
                **raw,
                "search": {**raw["search"], "profiles": {**profiles, sp.profile: {**profiles[sp.profile], **setting}}},
            }
        )
        fitted = fit(tuned, paths, torch.device("cpu"), progress=False)
        name = json.dumps(setting, sort_keys=True)
        out[name] = {
            **valid.measure_encoder(fitted.model, fitted.tokenizer, fitted.embeddings),
            **{k: fitted.meta[k] for k in ("train_seconds", "embed_seconds", "training_queries")},
        }
        log.info("%s: %s", name, out[name])
    return out


def main() -> None:
    from pipelines.common import configure_logging, load_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="*", help="JSON overrides of the training profile, one run each")
    args = parser.parse_args()
    configure_logging()
    settings = [json.loads(s) for s in args.settings] or [{}]
    started = time.perf_counter()
    for name, value in encoder_ndcg(load_params(), Paths(), settings).items():
        print(f"{name:70s} valid {json.dumps(value)}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

"""embed_catalog: zero-shot product-tower embeddings of the whole search catalog (each product's text:
search.text_fields joined; a titles-only catalog's titles).

The one expensive catalog pass (about 5 minutes on 2 CPU cores). Its output is a DVC output, and
the step itself also skips the pass when meta.json already records the same encoder, max length and
text hash, so the pass is never paid twice for the same model and text.

Outputs (models/search/embeddings/):
  embeddings.npy   float32 (n_products, dim), unit rows, in catalog order
  product_ids.npy  str (n_products,), the catalog order
  meta.json        encoder, max_length, text_hash, text_fields, n, dim, seconds, cpu_seconds, products_per_s
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np

from artifacts.files import staged_dir, write_json
from artifacts.paths import Paths
from components import schema as s
from components.config import Params
from pipelines.common import load_params, mlflow_run
from pipelines.io import read_table

log = logging.getLogger(__name__)

STEP = "embed_catalog"


def text_hash(texts: list[str]) -> str:
    """md5 of the texts in order: the cache key's text part."""
    digest = hashlib.md5()
    for t in texts:
        digest.update(t.encode("utf-8") + b"\0")
    return digest.hexdigest()


def run(params: Params, paths: Paths) -> dict:
    """Embed every product text with the pretrained encoder (skipped when cached for the same key)."""
    import torch

    from components.encoder import encode_texts, load_encoder, pick_device

    sp = params.search
    catalog = read_table(paths.validated / "search", s.CATALOG)
    texts = s.product_texts(catalog, sp.text_fields)
    key = {"encoder": sp.encoder, "max_length": sp.text_max_length, "text_hash": text_hash(texts)}
    target = paths.embeddings
    meta_path = target / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in key.items()) and (target / "embeddings.npy").exists():
            log.info("catalog embeddings cached for %s; skipping the pass", key)
            return meta
    if sp.training.num_threads:
        torch.set_num_threads(sp.training.num_threads)
    with mlflow_run(STEP, params, paths, inputs=[paths.validated / "search" / "catalog.parquet"], sections=("search",)):
        import mlflow

        device = pick_device()
        model, tokenizer = load_encoder(sp.encoder, device)
        start, cpu_start = time.perf_counter(), time.process_time()
        emb = encode_texts(model, tokenizer, texts, sp.training.encode_batch_size, sp.text_max_length, device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        meta = {
            **key,
            "text_fields": s.text_fields_present(catalog, sp.text_fields),
            "n": int(emb.shape[0]),
            "dim": int(emb.shape[1]),
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),  # all threads: the pass's CPU cost
            "products_per_s": round(len(texts) / max(seconds, 1e-9), 1),
            "device": str(device),
        }
        with staged_dir(target) as out:
            np.save(out / "embeddings.npy", emb)
            np.save(out / "product_ids.npy", catalog[s.PRODUCT_ID].astype(str).to_numpy(dtype=str), allow_pickle=False)
            write_json(out / "meta.json", meta)
        mlflow.set_tag("device", str(device))
        mlflow.log_metrics({"embed_seconds": seconds, "products_per_s": meta["products_per_s"]})
        log.info(
            "embedded %d products in %.0f s (%.0f products/s) on %s",
            len(texts),
            seconds,
            meta["products_per_s"],
            device,
        )
    return meta


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())

"""The search bundle: one folder the service loads as a unit, with no pickles of code.

    bundle/
      manifest.json            format version, feature names, settings, file names, library versions
      encoder/                 query tower, Hugging Face format (safetensors + tokenizer)
      query_tower.onnx         the same query tower as an ONNX graph (pooling included), checked against
                               PyTorch at export; the CPU query path (components/onnx_tower.py)
      product_adapter.safetensors  product-tower adapter over the base encoder (frozen mode only)
      product_encoder/         product tower when it was trained (shared mode only)
      index.faiss              FAISS index of the product embeddings (faiss.write_index)
      product_ids.npy          catalog order of the index rows and every array below
      catalog.parquet          product_id, title (and price and the other text fields the product text
                               joins, when the catalog has them; manifest "text_fields" names them)
      ranker.txt               LightGBM booster, native text format
      bm25/, bm25_expanded/    BM25 state as .npy arrays (vocabulary, idf, CSR parts, k1/b)
      priors/                  per-product train-judgment priors as .npy arrays

Usage (the service):
    model = load_search_bundle("models/search/bundle")
    model.search("cordless drill", k=10, explain=True)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from components import schema as s
from components.bm25 import BM25Index
from components.search_features import ProductPriors

FORMAT_VERSION = 1


def _save_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", np.asarray(arr), allow_pickle=False)


def _load_arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p, allow_pickle=False) for p in sorted(folder.glob("*.npy"))}


def save_search_bundle(
    out: Path,
    catalog: pd.DataFrame,
    query_encoder_dir: Path,
    index,
    bm25: BM25Index,
    bm25_expanded: BM25Index,
    priors: ProductPriors,
    booster,
    settings: dict,
    product_adapter: Path | None = None,
    product_encoder_dir: Path | None = None,
    probe_queries: list[str] | None = None,
) -> dict:
    """Write every part into the (empty or new) folder `out`; returns the manifest.

    catalog rows must be in the index's row order. settings: query_max_length, candidates_per_source,
    rrf_k, feature_names, text_fields (the catalog columns the product text joins, in order; default
    the title) and anything descriptive (encoder name, product tower mode).
    probe_queries: texts the ONNX export is checked on (its max |difference| goes into the manifest).
    """
    import faiss
    import lightgbm
    import torch
    import transformers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(query_encoder_dir, out / "encoder", dirs_exist_ok=True)
    onnx_diff = _export_onnx(out, probe_queries or [], int(settings["query_max_length"]))
    if product_encoder_dir is not None:
        shutil.copytree(product_encoder_dir, out / "product_encoder", dirs_exist_ok=True)
    if product_adapter is not None:
        shutil.copy2(product_adapter, out / "product_adapter.safetensors")
    faiss.write_index(index, str(out / "index.faiss"))
    np.save(out / "product_ids.npy", catalog[s.PRODUCT_ID].astype(str).to_numpy(dtype=str), allow_pickle=False)
    text_fields = list(settings.get("text_fields", [s.TITLE]))
    cols = [c for c in (s.PRODUCT_ID, s.TITLE, s.PRICE, *text_fields) if c in catalog.columns]
    cols = list(dict.fromkeys(cols))
    catalog[cols].reset_index(drop=True).to_parquet(out / "catalog.parquet", index=False)
    booster.save_model(str(out / "ranker.txt"))
    _save_arrays(out / "bm25", bm25.to_arrays())
    _save_arrays(out / "bm25_expanded", bm25_expanded.to_arrays())
    _save_arrays(out / "priors", priors.to_arrays())
    manifest = {
        "format_version": FORMAT_VERSION,
        "n_products": int(len(catalog)),
        "files": {
            "encoder": "encoder",
            "index": "index.faiss",
            "product_ids": "product_ids.npy",
            "catalog": "catalog.parquet",
            "ranker": "ranker.txt",
            "bm25": "bm25",
            "bm25_expanded": "bm25_expanded",
            "priors": "priors",
            "product_adapter": "product_adapter.safetensors" if product_adapter else None,
            "product_encoder": "product_encoder" if product_encoder_dir else None,
            "query_tower_onnx": "query_tower.onnx",
        },
        "onnx_max_abs_diff": onnx_diff,
        "text_fields": text_fields,
        "versions": {
            "faiss": faiss.__version__,
            "lightgbm": lightgbm.__version__,
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
        },
        **settings,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _export_onnx(out: Path, probe_queries: list[str], max_length: int) -> float:
    import torch

    from components.encoder import load_encoder
    from components.onnx_tower import export_query_tower

    encoder, tokenizer = load_encoder(str(out / "encoder"), torch.device("cpu"))
    return export_query_tower(encoder, tokenizer, out / "query_tower.onnx", probe_queries[:64], max_length)


def load_search_bundle(folder: Path | str, device: str = "auto", onnx: bool = True):
    """A ready SearchModel from a bundle folder.

    The query tower runs on CUDA when available; on CPU it runs in ONNX Runtime when the bundle has the
    graph and `onnx` (same vectors, a third of PyTorch's latency for one query), else in PyTorch.
    """
    import lightgbm as lgb

    from components.ann import read_index
    from components.encoder import load_encoder, pick_device
    from components.search_model import SearchModel

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}: bundle format {manifest.get('format_version')} != supported {FORMAT_VERSION}")
    catalog = pd.read_parquet(folder / "catalog.parquet")
    index = read_index(folder / "index.faiss")
    torch_dev = pick_device(device)
    encoder, tokenizer = load_encoder(str(folder / "encoder"), torch_dev)
    runtime = None
    if onnx and torch_dev.type == "cpu" and (folder / "query_tower.onnx").exists():
        from components.onnx_tower import OnnxQueryTower

        runtime = OnnxQueryTower(folder / "query_tower.onnx", tokenizer)
    priors = _load_arrays(folder / "priors")
    return SearchModel(
        product_ids=np.load(folder / "product_ids.npy", allow_pickle=False),
        titles=catalog[s.TITLE].fillna("").astype(str).tolist(),
        texts=s.product_texts(catalog, manifest.get("text_fields", [s.TITLE])),
        embeddings=index.reconstruct_n(0, index.ntotal),
        index=index,
        encoder=encoder,
        tokenizer=tokenizer,
        bm25=BM25Index.from_arrays(_load_arrays(folder / "bm25")),
        bm25_expanded=BM25Index.from_arrays(_load_arrays(folder / "bm25_expanded")),
        priors=ProductPriors(priors["count"], priors["mean_gain"], priors["max_gain"]),
        booster=lgb.Booster(model_file=str(folder / "ranker.txt")),
        price=catalog[s.PRICE].to_numpy(dtype=np.float32) if s.PRICE in catalog.columns else None,
        query_max_length=int(manifest["query_max_length"]),
        candidates_per_source=int(manifest["candidates_per_source"]),
        rrf_k=int(manifest["rrf_k"]),
        feature_names=tuple(manifest["feature_names"]),
        query_runtime=runtime,
    )


def read_manifest(folder: Path | str) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())

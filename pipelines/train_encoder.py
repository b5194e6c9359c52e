"""train_encoder: fine-tune the two-tower encoder on the train split (minus the ranker's fold).

Runs on CUDA with bf16 autocast when present, else CPU. Multi-GPU: launch with
`torchrun --nproc_per_node=N -m pipelines.train_encoder`; each rank trains on a slice of every
batch and gradients are averaged (rank 0 writes the outputs). Checkpoints every
`checkpoint_every` steps go to models/search/checkpoints/; rerunning an interrupted step resumes
from the last one (deleted on success). Same seed on CPU -> same weights -> same metrics.

Outputs (models/search/encoder/):
  query_encoder/             Hugging Face folder (safetensors + tokenizer): the query tower
  product_encoder/           the product tower when it was trained (gpu profile), else absent
  product_adapter.safetensors  linear adapter over the pretrained product embeddings (frozen mode)
  embeddings.npy, product_ids.npy  the fine-tuned product tower's catalog embeddings
  meta.json, history.json    settings, timings, per-step loss
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifacts.files import staged_dir, write_json
from artifacts.paths import Paths
from components import schema as s
from components.config import Params
from pipelines.budget import training_deadline
from pipelines.common import load_params, mlflow_run
from pipelines.io import read_table

log = logging.getLogger(__name__)

STEP = "train_encoder"


def _save_checkpoint(folder: Path, state: dict) -> None:
    """Model, adapter and AdamW moments as safetensors, scalars as JSON (no pickles)."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state["model"].items()}
    if state["adapter"] is not None:
        tensors["adapter"] = state["adapter"].contiguous()
    opt = state["optimizer"]
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous().reshape(v.shape)
    save_file(tensors, str(tmp / "state.safetensors"))
    write_json(tmp / "state.json", {"step": state["step"], "param_groups": opt["param_groups"]})
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _load_checkpoint(folder: Path) -> dict | None:
    if not (folder / "state.json").exists():
        return None
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "state.safetensors"))
    meta = json.loads((folder / "state.json").read_text())
    opt_state: dict = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            opt_state.setdefault(int(pid), {})[k] = v
    return {
        "step": meta["step"],
        "model": {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")},
        "adapter": tensors.get("adapter"),
        "optimizer": {"state": opt_state, "param_groups": meta["param_groups"]},
        "torch": torch.__version__,
    }


@dataclass
class Fitted:
    """A fine-tuned encoder and its catalog embeddings (what `fit` returns on rank 0)."""

    model: object
    tokenizer: object
    adapter: np.ndarray | None  # (dim, dim) over the pretrained product embeddings, frozen mode only
    product_ids: list[str]
    embeddings: np.ndarray  # (n, dim) float32 unit rows: the fine-tuned product tower's catalog
    history: list[dict]
    meta: dict


def fit(
    params: Params,
    paths: Paths,
    device,
    *,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
    checkpoint: Path | None = None,
    should_stop=None,
    on_trained=None,
) -> Fitted | None:
    """Fine-tune on the train split minus the ranker's fold, then embed the catalog with the product tower.

    checkpoint: a folder to resume from and save to every `checkpoint_every` steps (None: neither).
    on_trained: called once training ends, before the catalog pass (DDP tears down there). Returns None
    on ranks other than 0.
    """
    from components.bm25 import fit_bm25
    from components.encoder import encode_texts, load_encoder
    from components.encoder_training import (
        apply_adapter,
        build_training_queries,
        encode_from_states,
        finetune_encoder,
        frozen_states,
        in_ranker_fold,
    )

    sp, tp = params.search, params.search.training
    catalog = read_table(paths.validated / "search", s.CATALOG)
    product_ids = catalog[s.PRODUCT_ID].astype(str).tolist()
    texts = s.product_texts(catalog, sp.text_fields)
    train = pd_read(paths.split / "search" / "train.parquet")
    fold = in_ranker_fold(train[s.QUERY_ID].astype(str).tolist(), sp.ranker_fraction, params.seed)
    encoder_rows = train[~fold]
    if tp.max_queries:
        keep = sorted(encoder_rows[s.QUERY_ID].unique())[: tp.max_queries]
        encoder_rows = encoder_rows[encoder_rows[s.QUERY_ID].isin(keep)]
    index = {p: i for i, p in enumerate(product_ids)}
    bm25 = fit_bm25(texts, sp.bm25_k1, sp.bm25_b)
    queries = build_training_queries(
        encoder_rows, index, bm25, tp.hard_negatives, tp.hard_negative_pool, params.seed, params.data.search.relevance
    )
    frozen = None
    if not tp.train_product_tower:
        frozen = np.load(paths.embeddings / "embeddings.npy")
        if np.load(paths.embeddings / "product_ids.npy").astype(str).tolist() != product_ids:
            raise ValueError(f"{paths.embeddings} was embedded from another catalog: rerun embed_catalog")

    model, tokenizer = load_encoder(sp.encoder, device)
    resume = _load_checkpoint(checkpoint) if checkpoint is not None else None
    if resume:
        log.info("resuming from checkpoint at step %d", resume["step"])
    start = time.perf_counter()
    states = None
    if tp.cache_frozen_states:
        # The catalog below the frozen bottom, once: part of the catalog pass, counted in embed_seconds.
        states = frozen_states(
            model, tokenizer, texts, tp.frozen_layers, sp.text_max_length, tp.encode_batch_size, device
        )
    cache_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model, adapter, history = finetune_encoder(
        model,
        tokenizer,
        queries,
        texts,
        frozen,
        tp,
        device,
        params.seed,
        query_max_length=sp.query_max_length,
        title_max_length=sp.text_max_length,
        resume=resume,
        save_checkpoint=(lambda st: _save_checkpoint(checkpoint, st)) if checkpoint is not None else None,
        progress=progress,
        rank=rank,
        world=world,
        should_stop=should_stop,
        product_states=states,
    )
    train_seconds = time.perf_counter() - start
    if on_trained is not None:
        on_trained()
    if rank != 0:
        return None
    start = time.perf_counter()
    if adapter is not None:
        product_emb = apply_adapter(frozen, adapter)
    elif states is not None:
        product_emb = encode_from_states(model, states, tp.encode_batch_size, device)
    else:
        product_emb = encode_texts(model, tokenizer, texts, tp.encode_batch_size, sp.text_max_length, device)
    embed_seconds = time.perf_counter() - start + cache_seconds
    meta = {
        "encoder": sp.encoder,
        "profile": sp.profile,
        "device": str(device),
        "world_size": world,
        "training_queries": len(queries),
        "steps": len(history) + (resume["step"] if resume else 0),
        "train_seconds": round(train_seconds, 1),
        "embed_seconds": round(embed_seconds, 1),
        "product_tower": "frozen+adapter"
        if adapter is not None
        else (f"trained above {tp.frozen_layers} cached layers" if states is not None else "trained"),
        "cache_seconds": round(cache_seconds, 1),
        "query_max_length": sp.query_max_length,
        "text_max_length": sp.text_max_length,
        "final_loss": float(np.mean([h["loss"] for h in history[-20:]])) if history else None,
    }
    return Fitted(model, tokenizer, adapter, product_ids, product_emb.astype(np.float32), history, meta)


def run(params: Params, paths: Paths, progress: bool = True) -> dict:
    """Fine-tune, then embed the catalog with the fine-tuned product tower."""
    import contextlib

    import torch

    from components.encoder import pick_device

    tp = params.search.training
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        device = (
            torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    else:
        device = pick_device()
    if tp.num_threads:
        torch.set_num_threads(tp.num_threads)

    def teardown() -> None:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()  # no collective op after training: rank 0 writes alone

    tracked = rank == 0  # one MLflow run per training, not one per rank
    inputs = [paths.split / "search", paths.validated / "search"]
    with mlflow_run(STEP, params, paths, inputs=inputs, sections=("search",)) if tracked else contextlib.nullcontext():
        import mlflow

        if tracked:
            mlflow.set_tag("device", str(device))
        # The charter's training budget (unlimited outside the lifecycle) ends fine-tuning early.
        deadline = training_deadline(device.type)
        fitted = fit(
            params,
            paths,
            device,
            progress=progress,
            rank=rank,
            world=world,
            checkpoint=paths.checkpoints / "latest",
            should_stop=deadline.expired,
            on_trained=teardown,
        )
        if fitted is None:
            return {}
        meta = {**fitted.meta, "budget": deadline.summary()}
        history, model, tokenizer = fitted.history, fitted.model, fitted.tokenizer
        mlflow.log_params({"training_queries": meta["training_queries"], "world_size": world})
        with staged_dir(paths.encoder) as out:
            model.save_pretrained(out / "query_encoder", safe_serialization=True)
            tokenizer.save_pretrained(out / "query_encoder")
            if fitted.adapter is None:
                model.save_pretrained(out / "product_encoder", safe_serialization=True)
                tokenizer.save_pretrained(out / "product_encoder")
            else:
                from safetensors.numpy import save_file

                save_file(
                    {"weight": np.ascontiguousarray(fitted.adapter, dtype=np.float32)},
                    str(out / "product_adapter.safetensors"),
                )
            np.save(out / "embeddings.npy", fitted.embeddings)
            np.save(out / "product_ids.npy", np.array(fitted.product_ids, dtype=str))
            write_json(out / "meta.json", meta)
            write_json(out / "history.json", history)
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
        for h in history[:: max(1, len(history) // 200)]:
            mlflow.log_metric("loss", h["loss"], step=h["step"])
        mlflow.log_metrics(
            {
                "train_seconds": meta["train_seconds"],
                "embed_seconds": meta["embed_seconds"],
                "queries_per_s": len(history) * tp.batch_size / max(meta["train_seconds"], 1e-9),
            }
        )
        log.info(
            "fine-tuned %d steps in %.0f s on %s (final loss %.3f)",
            len(history),
            meta["train_seconds"],
            meta["device"],
            meta["final_loss"] or float("nan"),
        )
    return meta


def pd_read(path: Path):
    import pandas as pd

    return pd.read_parquet(path)


if __name__ == "__main__":
    from pipelines.common import configure_logging

    configure_logging()
    run(load_params(), Paths())

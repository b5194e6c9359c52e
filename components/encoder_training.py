"""Contrastive fine-tuning of the two-tower text encoder on graded query-product judgments.

Loss: softmax cross-entropy of each query against a shared candidate set per step (every judged
product of the batch = in-batch negatives for the other queries, plus per-query hard negatives
mined from BM25's top results, plus optional random catalog products), with a *soft* target that
spreads each query's probability over its judged products in proportion to their gain
(data.search.relevance; EVALUATION.md: relevance - 1): graded labels shape the target instead of
being binarised.

Two product-tower modes:
- frozen (CPU profile): products keep their cached pretrained embeddings and pass through a trained
  linear adapter (dim x dim, identity at start); only the query tower is fine-tuned. Scoring the
  whole catalog afterwards is one matrix product instead of a 5-minute encoder pass.
- shared (GPU profile): one transformer encodes queries and product titles and is trained end to end.
- shared over cached states (CPU profile, `cache_frozen_states`): the same shared tower with its word
  embeddings and first `frozen_layers` layers frozen; every product text's hidden states after that
  frozen bottom are computed once (FrozenStates), so a step runs only the top layers on products and
  the final catalog pass too (the bottom's share of the catalog pass is paid once, not per step).

Data parallel: with rank/world > 1 (torchrun), each rank takes a slice of every batch and gradients
are averaged with all_reduce before each optimizer step, as DDP does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from components import schema as s
from components.bm25 import BM25Index, top_k
from components.config import RelevanceScale
from components.config_search import TrainingProfile
from components.encoder import embed_batch

log = logging.getLogger(__name__)

# The adapter starts at identity and needs larger steps than the transformer.
ADAPTER_LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class TrainingQuery:
    """One training query: its text, judged products (catalog indices) with gains, and negatives."""

    text: str
    products: np.ndarray  # (m,) int64 judged products
    gains: np.ndarray  # (m,) float32, the judgment scale's gains (0 = its lowest grade)
    negatives: np.ndarray  # (h,) int64 hard negatives (unjudged)


def in_ranker_fold(query_ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Bool mask: True for train queries held out from the encoder and the priors (the ranker's rows).

    A salted md5 of the query id decides, so the assignment is stable across steps and runs.
    """
    import hashlib

    def u(q: str) -> float:
        return int(hashlib.md5(f"{seed}:{q}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    return np.array([u(str(q)) < fraction for q in query_ids], dtype=bool)


def build_training_queries(
    judgments: pd.DataFrame,
    product_index: dict[str, int],
    bm25: BM25Index,
    hard_negatives: int,
    pool: int,
    seed: int,
    scale: RelevanceScale | None = None,
) -> list[TrainingQuery]:
    """One TrainingQuery per query with at least one positive-gain judged product in the catalog.

    Hard negatives: `hard_negatives` products drawn (seeded) from BM25's top `pool` for the query,
    excluding every judged product (unjudged products count as gain 0, as in the evaluation).
    """
    rng = np.random.default_rng(seed)
    pos = judgments[s.PRODUCT_ID].astype(str).map(product_index)
    frame = pd.DataFrame(
        {
            "q": judgments[s.QUERY_ID].astype(str).to_numpy(),
            "text": judgments[s.QUERY].astype(str).to_numpy(),
            "p": pos.to_numpy(),
            "g": (scale or RelevanceScale()).gain_of(judgments[s.RELEVANCE].to_numpy(dtype=np.float32)),
        }
    )
    frame = frame.dropna(subset=["p"]).sort_values(["q", "p"], kind="stable")
    out = []
    for _, grp in frame.groupby("q", sort=True):
        gains = grp["g"].to_numpy(dtype=np.float32)
        if gains.max() <= 0:
            continue
        text = grp["text"].iloc[0]
        prods = grp["p"].to_numpy(dtype=np.int64)
        negs = np.zeros(0, dtype=np.int64)
        if hard_negatives > 0:
            scores = bm25.score(text)
            top = top_k(scores, pool)
            top = top[(scores[top] > 0) & ~np.isin(top, prods)]
            negs = rng.choice(top, size=min(hard_negatives, len(top)), replace=False) if len(top) else negs
        out.append(TrainingQuery(text, prods, gains, np.asarray(negs, dtype=np.int64)))
    return out


@dataclass(frozen=True)
class FrozenStates:
    """Hidden states of each product text after the frozen bottom (word embeddings + `layers` layers).

    states: (total_tokens, dim) float16, the texts' non-padding tokens back to back; offsets: (n + 1,)
    int64, text i's tokens are states[offsets[i]:offsets[i + 1]]. Valid while that bottom stays frozen.
    """

    states: torch.Tensor
    offsets: np.ndarray
    layers: int

    def __len__(self) -> int:
        return len(self.offsets) - 1


@torch.inference_mode()
def frozen_states(
    model, tokenizer, texts: Sequence[str], layers: int, max_length: int, batch_size: int, device: torch.device
) -> FrozenStates:
    """Run every text through the bottom `layers` transformer layers once (length-sorted batches)."""
    from components.encoder import autocast

    texts = [str(t) if t else " " for t in texts]
    tokens = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(ids) for ids in tokens], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    states = torch.zeros((int(offsets[-1]), model.config.hidden_size), dtype=torch.float16)
    order = np.argsort(lengths, kind="stable")
    was_training = model.training
    model.eval()
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch = batch.to(device)
        ext = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        with autocast(device):
            hidden = model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
            for layer in list(model.encoder.layer)[:layers]:  # only the bottom: the top runs per step
                hidden = layer(hidden, attention_mask=ext)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        hidden = hidden.float().cpu()
        for r, i in enumerate(idx):
            states[offsets[i] : offsets[i + 1]] = hidden[r, : lengths[i]].half()
    model.train(was_training)
    return FrozenStates(states, offsets, layers)


def embed_from_states(model, cache: FrozenStates, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """L2-normalised embeddings of products `idx` through the layers above the cached bottom (with grad
    when enabled): the same vectors as the full tower, at (6 - layers) / 6 of its cost for MiniLM."""
    from components.encoder import autocast, mean_pool

    lengths = cache.offsets[idx + 1] - cache.offsets[idx]
    width = int(lengths.max()) if len(idx) else 1
    hidden = torch.zeros((len(idx), width, cache.states.shape[1]), dtype=torch.float32)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx.tolist()):
        n = int(lengths[r])
        hidden[r, :n] = cache.states[cache.offsets[i] : cache.offsets[i] + n].float()
        mask[r, :n] = 1
    hidden, mask = hidden.to(device), mask.to(device)
    # additive attention mask (batch, 1, 1, seq): 0 on tokens, -inf-like on padding, as BERT builds it
    ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    with autocast(device):
        for layer in list(model.encoder.layer)[cache.layers :]:
            hidden = layer(hidden, attention_mask=ext)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return torch.nn.functional.normalize(mean_pool(hidden.float(), mask), dim=-1)


@torch.inference_mode()
def encode_from_states(model, cache: FrozenStates, batch_size: int, device: torch.device) -> np.ndarray:
    """(n, dim) float32 unit embeddings of every cached product (the catalog pass above the bottom)."""
    was_training = model.training
    model.eval()
    lengths = np.diff(cache.offsets)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(cache), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = embed_from_states(model, cache, idx, device).cpu().numpy()
    model.train(was_training)
    return out


class ProductAdapter(torch.nn.Module):
    """Linear map on frozen product embeddings, identity at start (so step 0 = zero-shot)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x @ self.weight, dim=-1)


def apply_adapter(embeddings: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Adapted, re-normalised product embeddings: (n, dim) float32 (the serving-time product tower)."""
    out = embeddings.astype(np.float32) @ weight.astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def freeze_bottom(model, embeddings: bool, layers: int) -> None:
    """Stop gradients into the word embeddings and the first `layers` transformer layers (BERT-style models)."""
    if embeddings and hasattr(model, "embeddings"):
        for p in model.embeddings.parameters():
            p.requires_grad_(False)
    blocks = getattr(getattr(model, "encoder", None), "layer", [])
    for block in list(blocks)[:layers]:
        for p in block.parameters():
            p.requires_grad_(False)


def total_steps(n_queries: int, profile: TrainingProfile) -> int:
    steps = profile.epochs * math.ceil(n_queries / profile.batch_size)
    return min(steps, profile.max_steps) if profile.max_steps else steps


def soft_contrastive_loss(q: torch.Tensor, p: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over queries of -Σ_j t_ij log softmax(q_i·p_j / τ) with t_i = gains normalised to sum 1.

    q: (b, dim), p: (c, dim) unit rows; target: (b, c) non-negative gains, each row with a positive sum.
    """
    logp = torch.log_softmax(q @ p.T / temperature, dim=1)
    t = target / target.sum(dim=1, keepdim=True)
    return -(t * logp).sum(dim=1).mean()


def finetune_encoder(
    model,
    tokenizer,
    queries: Sequence[TrainingQuery],
    product_texts: Sequence[str],
    frozen_embeddings: np.ndarray | None,
    profile: TrainingProfile,
    device: torch.device,
    seed: int,
    *,
    query_max_length: int,
    title_max_length: int,
    resume: dict | None = None,
    save_checkpoint: Callable[[dict], None] | None = None,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
    should_stop: Callable[[], bool] | None = None,
    product_states: FrozenStates | None = None,
) -> tuple[object, np.ndarray | None, list[dict]]:
    """Fine-tune in place; returns (model, adapter weight (dim, dim) or None, per-step history).

    profile: the active params profile (epochs, batch, learning rate, negatives, frozen layers);
    query_max_length / title_max_length: tokens kept per query / product text.
    frozen_embeddings: (n_products, dim) pretrained product embeddings for the frozen-tower mode,
    None for the shared-tower mode. resume: a checkpoint dict previously given to save_checkpoint
    ({"step", "model", "adapter", "optimizer"}); training continues at the next step and, with the
    same seed, follows the same batches as an uninterrupted run. should_stop (a training budget) is
    polled after every step: when it says so, training ends there and the model so far is returned.
    product_states: the products' cached states below the frozen bottom (shared mode with
    profile.cache_frozen_states; its `layers` must equal profile.frozen_layers): products then run
    through the top layers only.
    """
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    model.to(device).train()
    freeze_bottom(model, profile.freeze_embeddings, profile.frozen_layers)
    frozen = frozen_embeddings is not None and not profile.train_product_tower
    if product_states is not None and (
        frozen or not profile.freeze_embeddings or product_states.layers != profile.frozen_layers
    ):
        raise ValueError("cached product states need the shared tower with the same frozen bottom")
    dim = model.config.hidden_size
    adapter = ProductAdapter(dim).to(device) if frozen else None
    base = torch.from_numpy(np.ascontiguousarray(frozen_embeddings, dtype=np.float32)).to(device) if frozen else None
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": profile.learning_rate}]
    if adapter is not None:
        groups.append({"params": list(adapter.parameters()), "lr": ADAPTER_LEARNING_RATE})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    steps = total_steps(len(queries), profile)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(profile.warmup_fraction * steps), max(steps, 1))
    start_step = 0
    if resume:
        model.load_state_dict(resume["model"])
        if adapter is not None and resume.get("adapter") is not None:
            adapter.weight.data.copy_(resume["adapter"].to(device))
        optimizer.load_state_dict(resume["optimizer"])
        start_step = int(resume["step"])
        for _ in range(start_step):
            scheduler.step()
    n_products = len(product_texts)
    per_epoch = math.ceil(len(queries) / profile.batch_size)
    history: list[dict] = []
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start_step, desc="fine-tune", unit="step")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    tick, seen = time.perf_counter(), 0
    for step in range(start_step, steps):
        epoch, b = divmod(step, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(len(queries))
        batch = [queries[i] for i in perm[b * profile.batch_size : (b + 1) * profile.batch_size]][rank::world]
        step_rng = np.random.default_rng([seed, 1_000_003, step])
        torch.manual_seed(seed * 1_000_003 + step)  # dropout masks depend on (seed, step) only: resumable
        pools = [np.concatenate([tq.products, tq.negatives]) for tq in batch]
        if profile.random_negatives:
            pools.append(step_rng.choice(n_products, size=min(profile.random_negatives, n_products), replace=False))
        cand = np.unique(np.concatenate(pools)) if pools else np.zeros(0, np.int64)
        col = {c: j for j, c in enumerate(cand.tolist())}
        target = torch.zeros((len(batch), len(cand)), device=device)
        for i, tq in enumerate(batch):
            target[i, [col[c] for c in tq.products.tolist()]] = torch.from_numpy(np.maximum(tq.gains, 0)).to(device)
        q = embed_batch(model, tokenizer, [tq.text for tq in batch], query_max_length, device)
        if frozen:
            p = adapter(base[torch.from_numpy(cand).to(device)])
        elif product_states is not None:
            p = embed_from_states(model, product_states, cand, device)
        else:
            p = embed_batch(model, tokenizer, [product_texts[c] for c in cand], title_max_length, device)
        loss = soft_contrastive_loss(q, p, target, profile.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            import torch.distributed as dist

            for prm in params:
                if prm.grad is not None:
                    dist.all_reduce(prm.grad)
                    prm.grad /= world
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        seen += len(batch)
        history.append({"step": step + 1, "loss": float(loss.detach()), "candidates": int(len(cand))})
        if bar is not None:
            rate = seen * world / max(time.perf_counter() - tick, 1e-9)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", queries_per_s=f"{rate:.0f}")
            bar.update(1)
        due = (step + 1) % profile.checkpoint_every == 0 and step + 1 < steps
        if save_checkpoint is not None and rank == 0 and due:
            save_checkpoint(
                {
                    "step": step + 1,
                    "model": model.state_dict(),
                    "adapter": adapter.weight.detach().cpu() if adapter is not None else None,
                    "optimizer": optimizer.state_dict(),
                }
            )
        if should_stop is not None and should_stop():
            log.warning("training budget reached at step %d of %d: stopping with the model so far", step + 1, steps)
            break
    if bar is not None:
        bar.close()
    model.eval()
    weight = adapter.weight.detach().cpu().numpy() if adapter is not None else None
    return model, weight, history

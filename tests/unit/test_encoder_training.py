"""Encoder fine-tuning: the loss, the fold split, hard negatives, and resume == uninterrupted run."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from components import schema as s
from components.bm25 import fit_bm25
from components.config_search import TrainingProfile
from components.encoder_training import (
    apply_adapter,
    build_training_queries,
    embed_from_states,
    encode_from_states,
    finetune_encoder,
    frozen_states,
    in_ranker_fold,
    soft_contrastive_loss,
)

TITLES = ["cordless drill 18v", "drill bit set", "garden hose 50 ft", "hose reel", "led bulb 60w", "drill press"]
LENGTHS = {"query_max_length": 8, "title_max_length": 8}  # tokens


def test_loss_is_lowest_when_each_query_points_at_its_positive() -> None:
    p = torch.eye(3)
    target = torch.eye(3)
    aligned = soft_contrastive_loss(torch.eye(3), p, target, 0.05)
    shuffled = soft_contrastive_loss(torch.eye(3)[[1, 2, 0]], p, target, 0.05)
    assert aligned.item() < 1e-6 < shuffled.item()


def test_graded_target_prefers_the_higher_gain() -> None:
    p = torch.eye(2)
    target = torch.tensor([[2.0, 1.0]])
    toward_best = soft_contrastive_loss(torch.tensor([[0.8, 0.6]]), p, target, 1.0)
    toward_worse = soft_contrastive_loss(torch.tensor([[0.6, 0.8]]), p, target, 1.0)
    assert toward_best < toward_worse


def test_ranker_fold_is_stable_and_about_the_fraction() -> None:
    ids = [f"q{i}" for i in range(2000)]
    a, b = in_ranker_fold(ids, 0.3, seed=0), in_ranker_fold(ids, 0.3, seed=0)
    assert (a == b).all() and 0.25 < a.mean() < 0.35
    assert (in_ranker_fold(ids, 0.3, seed=1) != a).any()


def test_hard_negatives_never_include_judged_products() -> None:
    judgments = pd.DataFrame(
        {
            s.QUERY_ID: ["q1", "q1", "q2"],
            s.QUERY: ["drill", "drill", "hose"],
            s.PRODUCT_ID: ["0", "1", "2"],
            s.RELEVANCE: [3.0, 1.0, 1.0],
        }
    )
    index = {str(i): i for i in range(len(TITLES))}
    tq = build_training_queries(judgments, index, fit_bm25(TITLES), hard_negatives=5, pool=10, seed=0)
    assert len(tq) == 1  # q2 has no positive gain
    assert set(tq[0].negatives.tolist()) == {5}  # "drill press": BM25 hit, unjudged
    np.testing.assert_allclose(tq[0].gains, [2.0, 0.0])


def test_adapter_output_is_unit_length() -> None:
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    out = apply_adapter(x, np.eye(3) * 2)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def _tiny_training_queries():
    torch.set_num_threads(1)
    judgments = pd.DataFrame(
        {
            s.QUERY_ID: ["a", "b", "c", "d"],
            s.QUERY: ["power drill", "water hose", "bulb", "bits"],
            s.PRODUCT_ID: ["0", "2", "4", "1"],
            s.RELEVANCE: [3.0, 3.0, 2.0, 2.5],
        }
    )
    index = {str(i): i for i in range(len(TITLES))}
    return build_training_queries(judgments, index, fit_bm25(TITLES), 2, 5, seed=0)


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted_run() -> None:
    from components.encoder import encode_texts, load_encoder

    queries = _tiny_training_queries()
    cfg = TrainingProfile(
        epochs=2,
        batch_size=2,
        learning_rate=1e-4,
        warmup_fraction=0.0,
        temperature=0.05,
        random_negatives=2,
        train_product_tower=False,
        checkpoint_every=2,
    )
    model, tok = load_encoder(device=torch.device("cpu"))
    frozen = encode_texts(model, tok, TITLES, max_length=8)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    device = torch.device("cpu")

    _, w_full, hist_full = finetune_encoder(
        model, tok, queries, TITLES, frozen, cfg, device, 0, **LENGTHS, progress=False
    )
    full_state = {k: v.clone() for k, v in model.state_dict().items()}

    saved = []
    model.load_state_dict(init)
    partial = cfg.model_copy(update={"max_steps": 2})
    finetune_encoder(
        model, tok, queries, TITLES, frozen, partial, device, 0, **LENGTHS, progress=False, save_checkpoint=saved.append
    )
    assert saved == []  # nothing saved at the very last step of a run
    model.load_state_dict(init)
    finetune_encoder(
        model,
        tok,
        queries,
        TITLES,
        frozen,
        cfg,
        device,
        0,
        **LENGTHS,
        progress=False,
        save_checkpoint=lambda st: saved.append(copy.deepcopy(st)) if not saved else None,
    )
    model.load_state_dict(init)
    _, w_res, hist_res = finetune_encoder(
        model, tok, queries, TITLES, frozen, cfg, device, 0, **LENGTHS, resume=saved[0], progress=False
    )
    assert [h["step"] for h in hist_res] == [3, 4]
    np.testing.assert_allclose([h["loss"] for h in hist_res], [h["loss"] for h in hist_full[2:]], rtol=1e-4)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, full_state[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w_res, w_full, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_training_budget_ends_fine_tuning_at_the_step_that_reaches_it() -> None:
    from components.encoder import encode_texts, load_encoder

    queries = _tiny_training_queries()
    cfg = TrainingProfile(
        epochs=3,
        batch_size=2,
        learning_rate=1e-4,
        warmup_fraction=0.0,
        temperature=0.05,
        random_negatives=2,
        train_product_tower=False,
    )
    model, tok = load_encoder(device=torch.device("cpu"))
    frozen = encode_texts(model, tok, TITLES, max_length=8)
    polls = []

    def budget_after_two_steps() -> bool:
        polls.append(1)
        return len(polls) >= 2

    _, _, history = finetune_encoder(
        model,
        tok,
        queries,
        TITLES,
        frozen,
        cfg,
        torch.device("cpu"),
        0,
        **LENGTHS,
        progress=False,
        should_stop=budget_after_two_steps,
    )
    assert [h["step"] for h in history] == [1, 2]


def test_cached_bottom_states_give_the_full_towers_vectors() -> None:
    """Products through the top layers over cached bottom states = the whole tower (fp16 cache error only)."""
    from components.encoder import encode_texts, load_encoder

    model, tok = load_encoder(device=torch.device("cpu"))
    texts = [*TITLES, "", "x " * 40]  # an empty text and one cut at max_length
    full = encode_texts(model, tok, texts, batch_size=3, max_length=8)
    for layers in (0, 4):
        cache = frozen_states(model, tok, texts, layers, 8, 3, torch.device("cpu"))
        assert len(cache) == len(texts) and cache.states.dtype == torch.float16
        np.testing.assert_allclose(encode_from_states(model, cache, 2, torch.device("cpu")), full, atol=1e-3)
        some = np.array([5, 0, 2])
        np.testing.assert_allclose(
            embed_from_states(model, cache, some, torch.device("cpu")).detach(), full[some], atol=1e-3
        )


def test_training_over_cached_states_moves_only_the_top_layers() -> None:
    from components.encoder import load_encoder

    cfg = TrainingProfile(
        epochs=1,
        batch_size=2,
        learning_rate=1e-3,
        warmup_fraction=0.0,
        random_negatives=2,
        train_product_tower=True,
        freeze_embeddings=True,
        frozen_layers=4,
        cache_frozen_states=True,
        max_steps=1,
    )
    model, tok = load_encoder(device=torch.device("cpu"))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    cache = frozen_states(model, tok, TITLES, 4, 8, 4, torch.device("cpu"))
    _, adapter, history = finetune_encoder(
        model,
        tok,
        _tiny_training_queries(),
        TITLES,
        None,
        cfg,
        torch.device("cpu"),
        0,
        **LENGTHS,
        progress=False,
        product_states=cache,
    )
    assert adapter is None and len(history) == 1
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, init[k])}
    assert changed and all(k.startswith(("encoder.layer.4.", "encoder.layer.5.", "pooler.")) for k in changed)
    wrong = cfg.model_copy(update={"frozen_layers": 3})
    with pytest.raises(ValueError, match="same frozen bottom"):
        finetune_encoder(
            model,
            tok,
            _tiny_training_queries(),
            TITLES,
            None,
            wrong,
            torch.device("cpu"),
            0,
            **LENGTHS,
            progress=False,
            product_states=cache,
        )
    with pytest.raises(ValueError, match="cache_frozen_states needs"):
        TrainingProfile(train_product_tower=False, freeze_embeddings=True, cache_frozen_states=True)

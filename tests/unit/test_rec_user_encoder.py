import numpy as np
import torch

from components.config_recommend import UserEncoderParams
from components.user_encoder import (
    PAD,
    _examples,
    encode_users,
    item_vectors,
    pad_sequences,
    train_user_encoder,
)
from tests.unit._rec_fixtures import shop_text

CFG = UserEncoderParams(dim=6, max_len=4, epochs=2, batch_size=4, max_windows=2)


def test_pad_sequences_keeps_the_tail_left_padded():
    out = pad_sequences([[0, 1, 2, 3, 4], [7], []], 3)
    assert out.tolist() == [[3, 4, 5], [PAD, PAD, 8], [PAD, PAD, PAD]]


def test_examples_are_history_before_a_basket_and_its_distinct_items():
    cfg = UserEncoderParams(dim=6, max_len=3, max_windows=2)
    inputs, targets = _examples([[[0, 1], [2], [3, 3, 1]], [[5]], []], cfg)
    # One user with three baskets gives its last two as targets; a one-basket user gives none.
    assert targets == [[2], [1, 3]]
    # History is the items before the target basket, the newest max_len of them, left-padded.
    assert inputs.tolist() == [[PAD, 1, 2], [1, 2, 3]]


def test_shapes_and_cold_items_are_text_only():
    text = shop_text(5)
    seen = np.array([True, True, True, True, False])
    model = train_user_encoder([[[0, 1], [2]], [[1, 2], [3, 0]], [[3]]], text, seen, CFG, seed=0)
    vecs = item_vectors(model)
    assert vecs.shape == (5, 6)
    with torch.no_grad():
        text_only = model.proj(torch.as_tensor(text)).numpy()
    # The never-bought item 4 keeps exactly its text projection; a bought item has learned more.
    assert np.allclose(vecs[4], text_only[4], atol=1e-6)
    assert not np.allclose(vecs[0], text_only[0], atol=1e-6)
    # Short histories, a cold item, no purchases at all: padding never turns a vector into NaN.
    users = encode_users(model, [[[0, 1]], [[4]], []], CFG.max_len)
    assert users.shape == (3, 6) and np.isfinite(users).all()


def test_padding_does_not_change_a_users_vector():
    text, seen = shop_text(5), np.ones(5, dtype=bool)
    model = train_user_encoder([[[0, 1], [2]], [[1, 2], [3, 0]]], text, seen, CFG, seed=0)
    with torch.no_grad():
        padded = model.encode(torch.as_tensor(pad_sequences([[2, 3]], 4))).numpy()
        # The same two purchases in a window of two slots: the padded slots' keys are never read.
        unpadded = model.encode(torch.as_tensor([[3, 4]])).numpy()
        longer = model.encode(torch.as_tensor([[PAD, 5, 3, 4]])).numpy()
    assert np.allclose(padded, unpadded, atol=1e-6)
    assert not np.allclose(padded, longer, atol=1e-4)


def test_learns_that_users_buy_their_own_items_again():
    # Each user rebuys one item, basket after basket: the next-basket objective must put it first.
    text, seen = shop_text(6), np.ones(6, dtype=bool)
    baskets = [[[u % 6]] * 4 for u in range(24)]
    cfg = UserEncoderParams(dim=8, max_len=4, epochs=60, batch_size=8, lr=0.01, max_windows=3, dropout=0.0)
    model = train_user_encoder(baskets, text, seen, cfg, seed=0)
    scores = encode_users(model, baskets, cfg.max_len) @ item_vectors(model).T
    assert (scores.argmax(axis=1) == np.arange(24) % 6).all()


def test_same_seed_same_user_vectors():
    text, seen = shop_text(5), np.ones(5, dtype=bool)
    seqs = [[[0, 1], [2]], [[2, 3], [4]]]
    a = encode_users(train_user_encoder(seqs, text, seen, CFG, seed=3), seqs, CFG.max_len)
    b = encode_users(train_user_encoder(seqs, text, seen, CFG, seed=3), seqs, CFG.max_len)
    assert np.allclose(a, b)


def test_training_budget_stops_after_the_epoch_that_reaches_it():
    text, seen = shop_text(4), np.ones(4, dtype=bool)
    seqs = [[[0], [1, 2]], [[1, 2], [3], [0]], [[3], [1]]]
    polls = []

    def budget_reached() -> bool:
        polls.append(1)
        return True

    many = UserEncoderParams(dim=6, max_len=4, epochs=6, batch_size=4, max_windows=2)
    one = UserEncoderParams(dim=6, max_len=4, epochs=1, batch_size=4, max_windows=2)
    stopped = encode_users(train_user_encoder(seqs, text, seen, many, seed=3, should_stop=budget_reached), seqs, 4)
    single = encode_users(train_user_encoder(seqs, text, seen, one, seed=3), seqs, 4)
    assert len(polls) == 1
    np.testing.assert_allclose(stopped, single)


def test_a_horizon_makes_the_target_everything_bought_within_it():
    cfg = UserEncoderParams(dim=6, max_len=3, max_windows=3, horizon_days=10.0)
    baskets = [[[0], [1], [2, 1], [4]]]
    days = [np.array([0.0, 5.0, 14.0, 15.0])]
    _, targets = _examples(baskets, cfg, days)
    # From day 5: baskets on days 5 and 14 (15 is not within 10 days); from day 14: days 14 and 15.
    assert targets == [[1, 2], [1, 2, 4], [4]]
    _, alone = _examples(baskets, UserEncoderParams(dim=6, max_len=3, max_windows=3, horizon_days=0.0), days)
    assert alone == [[1], [1, 2], [4]]

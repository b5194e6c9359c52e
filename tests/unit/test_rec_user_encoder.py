import numpy as np
import torch

from components.config_recommend import UserEncoderParams
from components.user_encoder import (
    PAD,
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


def test_shapes_and_cold_items_are_text_only():
    text = shop_text(5)
    seen = np.array([True, True, True, True, False])
    model = train_user_encoder([[0, 1, 2], [1, 2, 3, 0], [3]], text, seen, CFG, seed=0)
    vecs = item_vectors(model)
    assert vecs.shape == (5, 6)
    with torch.no_grad():
        text_only = model.proj(torch.as_tensor(text)).numpy()
    # The never-bought item 4 keeps exactly its text projection; a bought item has learned more.
    assert np.allclose(vecs[4], text_only[4], atol=1e-6)
    assert not np.allclose(vecs[0], text_only[0], atol=1e-6)
    users = encode_users(model, [[0, 1], [4], []], CFG.max_len)
    assert users.shape == (3, 6) and np.isfinite(users).all()


def test_same_seed_same_user_vectors():
    text, seen = shop_text(5), np.ones(5, dtype=bool)
    seqs = [[0, 1, 2], [2, 3, 4]]
    a = encode_users(train_user_encoder(seqs, text, seen, CFG, seed=3), seqs, CFG.max_len)
    b = encode_users(train_user_encoder(seqs, text, seen, CFG, seed=3), seqs, CFG.max_len)
    assert np.allclose(a, b)


def test_training_budget_stops_after_the_epoch_that_reaches_it():
    text, seen = shop_text(4), np.ones(4, dtype=bool)
    seqs = [[0, 1, 2], [1, 2, 3, 0], [3, 1]]
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

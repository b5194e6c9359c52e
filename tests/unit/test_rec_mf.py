import numpy as np
import scipy.sparse as sp

from components.config_recommend import MFParams
from components.mf import mf_scores, train_bpr


def _blocks() -> sp.csr_matrix:
    """Users 0-3 buy items 0-3, users 4-7 buy items 4-7: two clean taste groups."""
    m = np.zeros((8, 8), dtype=np.float32)
    m[:4, :4] = 1
    m[4:, 4:] = 1
    for i in range(8):
        m[i, i] = 0  # hold out the diagonal: MF must infer it from the group
    return sp.csr_matrix(m)


def test_shapes_and_bias_folded_in():
    users, items = train_bpr(_blocks(), MFParams(dim=4, epochs=1, lr=0.01, batch_size=8), seed=0)
    assert users.shape == (8, 5) and items.shape == (8, 5)
    assert np.allclose(users[:, -1], 1.0)


def test_same_seed_same_factors():
    a = train_bpr(_blocks(), MFParams(dim=4, epochs=2, lr=0.01, batch_size=8), seed=1)
    b = train_bpr(_blocks(), MFParams(dim=4, epochs=2, lr=0.01, batch_size=8), seed=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_learns_the_taste_groups():
    users, items = train_bpr(_blocks(), MFParams(dim=4, epochs=150, lr=0.05, batch_size=64), seed=0)
    sc = mf_scores(users, items, np.arange(8))
    in_group = np.array([sc[u, (u // 4) * 4 + (u % 4)] for u in range(8)])  # the held-out diagonal
    other = np.array([sc[u, ((u // 4) ^ 1) * 4 : ((u // 4) ^ 1) * 4 + 4].mean() for u in range(8)])
    assert (in_group > other).mean() >= 0.75


def test_training_budget_stops_after_the_epoch_that_reaches_it():
    polls = []

    def budget_reached() -> bool:
        polls.append(1)
        return True

    stopped = train_bpr(_blocks(), MFParams(dim=4, epochs=5, lr=0.01, batch_size=8), seed=1, should_stop=budget_reached)
    one_epoch = train_bpr(_blocks(), MFParams(dim=4, epochs=1, lr=0.01, batch_size=8), seed=1)
    assert len(polls) == 1
    np.testing.assert_array_equal(stopped[0], one_epoch[0])

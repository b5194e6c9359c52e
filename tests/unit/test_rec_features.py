import numpy as np
import pandas as pd
import pytest

from components import schema as s
from components.config_recommend import CandidateParams, MFParams, UserEncoderParams
from components.rec_features import (
    FEATURES,
    candidate_features,
    candidate_labels,
    fit_rec_state,
    rows_of,
)
from tests.unit._rec_fixtures import shop_catalog, shop_events, shop_text

AS_OF = np.datetime64("2011-04-01")


SMALL = CandidateParams(own=5, knn=3, mf=3, encoder=3, trending=2, knn_neighbours=3)


def fit(events=None, candidates=SMALL):
    cat = shop_catalog()
    return fit_rec_state(
        shop_events() if events is None else events,
        cat,
        shop_text(len(cat)),
        AS_OF,
        MFParams(dim=4, epochs=2, lr=0.01, batch_size=8),
        UserEncoderParams(dim=4, max_len=4, epochs=1, batch_size=4, max_windows=4),
        candidates,
        seed=0,
    )


def test_state_universe_and_never_purchased_item():
    st = fit()
    assert list(st.items) == list("abcdefgz")
    assert st.rankable.tolist() == [True] * 7 + [False]
    assert np.isfinite(st.encoder_items[-1]).all() and np.abs(st.encoder_items[-1]).sum() > 0  # cold vector


def test_events_at_or_after_as_of_are_refused():
    late = shop_events()
    late.loc[0, s.TIMESTAMP] = pd.Timestamp(AS_OF)
    with pytest.raises(ValueError, match="leak"):
        fit(late)


def test_candidates_features_and_groups():
    st = fit()
    rows = rows_of(st, ["ann", "solo"])
    cand_rows, cand_items, x = candidate_features(st, rows)
    assert x.shape == (len(cand_rows), len(FEATURES))
    assert not st.items[cand_items].tolist().count("z")  # never-bought items are not ranked
    assert list(dict.fromkeys(cand_rows.tolist())) == rows.tolist()  # grouped by user, in request order
    ann = cand_rows == rows[0]
    a = ann & (st.items[cand_items] == "a")
    f = dict(zip(FEATURES, x[a][0], strict=True))
    assert f["own_baskets"] == 3 and f["own_rank"] == 1
    assert f["own_days_since_last"] == pytest.approx(31.0)  # 2011-03-01 -> 2011-04-01
    assert f["own_interval"] == pytest.approx(29.5)  # Jan 1 -> Mar 1 over two gaps
    never = ann & (st.items[cand_items] == "d")
    if never.any():
        assert np.isnan(x[never][0][FEATURES.index("own_days_since_last")])


def test_user_with_one_purchase_gets_candidates_beyond_it():
    st = fit()
    cand_rows, cand_items, _ = candidate_features(st, rows_of(st, ["solo"]))
    items = set(st.items[cand_items])
    assert "c" in items and len(items) > 1


def test_labels_and_unknown_rows():
    st = fit()
    cand_rows, cand_items, _ = candidate_features(st, rows_of(st, ["ann"]))
    y = candidate_labels(st, cand_rows, cand_items, {"ann": {"a"}})
    assert y.sum() == 1 and st.items[cand_items][y == 1].tolist() == ["a"]
    assert rows_of(st, ["nobody"]).tolist() == [-1]

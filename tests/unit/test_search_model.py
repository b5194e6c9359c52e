"""SearchModel edge cases, each with its defined behaviour (see components/search_model.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components import schema as s
from components.ann import build_index
from components.bm25 import fit_bm25
from components.search_features import FEATURE_NAMES, product_priors
from components.search_model import MAX_QUERY_CHARS, SearchModel

TITLES = ["Cordless Drill 18V", "drill bit set", "garden hose 50 ft", "", "Lampe de bureau à LED – café"]


@pytest.fixture(scope="module")
def encoder():
    from components.encoder import load_encoder

    return load_encoder(device=None)


def _booster(seed: int = 0):
    """A tiny real LambdaRank booster over the real feature layout (synthetic rows: this is a unit test)."""
    from components.config_search import RankerParams
    from components.ranker import train_lambdarank

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, len(FEATURE_NAMES)))
    y = (x[:, FEATURE_NAMES.index("bm25")] > 0).astype(int) + (x[:, FEATURE_NAMES.index("dense")] > 0.5)
    g = np.full(20, 10)
    cfg = RankerParams(n_estimators=10, min_data_in_leaf=5, early_stopping_rounds=5)
    return train_lambdarank(x, y, g, x, y, g, FEATURE_NAMES, cfg, seed, eval_at=10)


@pytest.fixture(scope="module")
def model(encoder) -> SearchModel:
    from components.encoder import encode_texts

    enc, tok = encoder
    ids = [f"p{i}" for i in range(len(TITLES))]
    emb = encode_texts(enc, tok, TITLES, max_length=32)
    judged = pd.DataFrame({s.QUERY_ID: ["q"], s.QUERY: ["power drill"], s.PRODUCT_ID: ["p0"], s.RELEVANCE: [3.0]})
    return SearchModel(
        product_ids=np.array(ids),
        titles=TITLES,
        embeddings=emb,
        index=build_index(emb),
        encoder=enc,
        tokenizer=tok,
        bm25=fit_bm25(TITLES),
        bm25_expanded=fit_bm25(TITLES),
        priors=product_priors(judged, ids),
        booster=_booster(),
        candidates_per_source=150,
    )


def test_empty_or_blank_query_returns_nothing(model) -> None:
    assert model.search("", k=10) == [] and model.search("   \t", k=10) == [] and model.search(None, k=3) == []
    assert model.rank_queries(["", "drill"], k=3)[0][0].tolist() == []


def test_k_zero_returns_nothing(model) -> None:
    assert model.search("drill", k=0) == []


def test_catalog_smaller_than_k_returns_every_product_once(model) -> None:
    results = model.search("drill", k=50)
    assert len(results) == len(TITLES)
    assert sorted(r["product_id"] for r in results) == sorted(model.product_ids.tolist())
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_stop_words_or_symbols_still_answer_from_the_dense_tower(model) -> None:
    for q in ("!!! ???", "the of and", "€€€"):
        results = model.search(q, k=3)
        assert len(results) == 3, q


def test_very_long_query_is_truncated_and_answered(model) -> None:
    long_query = "cordless drill " * 1000
    assert len(model.clean_query(long_query)) == MAX_QUERY_CHARS
    assert len(model.search(long_query, k=2)) == 2


def test_empty_title_product_is_returned_with_empty_title(model) -> None:
    results = model.search("drill", k=len(TITLES))
    empty = [r for r in results if r["product_id"] == "p3"]
    assert len(empty) == 1 and empty[0]["title"] == ""


def test_non_ascii_query_and_titles(model) -> None:
    results = model.search("lampe café à led", k=1)
    assert results[0]["product_id"] == "p4"


def test_explain_gives_top_feature_contributions(model) -> None:
    results = model.search("cordless drill", k=2, explain=True, top_features=3)
    for r in results:
        names = [c[0] for c in r["contributions"]]
        assert len(names) == 3 and set(names) <= set(FEATURE_NAMES)
        mags = [abs(c[1]) for c in r["contributions"]]
        assert mags == sorted(mags, reverse=True)


def test_explain_says_which_retrieval_sources_found_each_result(model) -> None:
    from components.search_model import RETRIEVAL_SOURCES

    q = model.clean_query("cordless drill")
    *_, sources = model._retrieve(q, model.encode_queries([q])[0])
    lists = zip(RETRIEVAL_SOURCES, sources, strict=True)
    held = {name: set(model.product_ids[np.asarray(ids)].tolist()) for name, ids in lists}
    results = model.search("cordless drill", k=5, explain=True)
    assert results and all(r["sources"] for r in results)  # every candidate came from at least one list
    for r in results:
        assert r["sources"] == [name for name in RETRIEVAL_SOURCES if r["product_id"] in held[name]]
    assert "sources" not in model.search("cordless drill", k=5)[0]


def test_rank_queries_and_search_agree(model) -> None:
    """One scoring path: the offline ranking and the service answer are the same products and scores."""
    ((idx, scores),) = model.rank_queries(["drill bit"], k=3)
    results = model.search("drill bit", k=3)
    assert [r["product_id"] for r in results] == model.product_ids[idx].tolist()
    np.testing.assert_allclose([r["score"] for r in results], scores)
    judged = model.score_products("drill bit", idx)
    np.testing.assert_allclose(judged, scores)


def test_without_ranker_candidates_are_ordered_by_rrf(model) -> None:
    from dataclasses import replace

    plain = replace(model, booster=None)
    results = plain.search("garden hose", k=2)
    assert results[0]["product_id"] == "p2"


def _model_with(encoder, judged: pd.DataFrame, feature_names) -> SearchModel:
    from components.encoder import encode_texts
    from components.search_features import expanded_texts

    enc, tok = encoder
    ids = [f"p{i}" for i in range(len(TITLES))]
    emb = encode_texts(enc, tok, TITLES, max_length=32)
    return SearchModel(
        product_ids=np.array(ids),
        titles=TITLES,
        embeddings=emb,
        index=build_index(emb),
        encoder=enc,
        tokenizer=tok,
        bm25=fit_bm25(TITLES),
        bm25_expanded=fit_bm25(expanded_texts(TITLES, ids, judged, 2.0)),
        priors=product_priors(judged, ids),
        candidates_per_source=2,
        feature_names=feature_names,
    )


def test_content_only_model_cannot_see_judgments(encoder) -> None:
    """Without a judgment-derived feature, neither the features nor the candidates depend on judgments."""
    from components.search_features import JUDGMENT_FEATURES, feature_names_of

    content = feature_names_of(["content"])
    # "power tool" reaches the hose only through the judgment-expanded text
    judged = pd.DataFrame(
        {s.QUERY_ID: ["q", "q"], s.QUERY: ["power tool"] * 2, s.PRODUCT_ID: ["p2", "p0"], s.RELEVANCE: [3.0, 2.5]}
    )
    none = judged.iloc[:0]
    queries = ["power tool", "drill", "garden hose"]
    hybrid = _model_with(encoder, judged, FEATURE_NAMES).candidate_features(queries)
    hybrid_blind = _model_with(encoder, none, FEATURE_NAMES).candidate_features(queries)
    assert any(  # the judgments do change the full model (so the check below can fail)
        not np.array_equal(a[0], b[0]) or not np.allclose(a[1], b[1], equal_nan=True)
        for a, b in zip(hybrid, hybrid_blind, strict=True)
    )
    seeing = _model_with(encoder, judged, content)
    blind = _model_with(encoder, none, content)
    assert seeing.priors.count.sum() == 0 and seeing.bm25_expanded is seeing.bm25
    for (cand_a, x_a), (cand_b, x_b) in zip(
        seeing.candidate_features(queries), blind.candidate_features(queries), strict=True
    ):
        np.testing.assert_array_equal(cand_a, cand_b)
        np.testing.assert_array_equal(x_a, x_b)
        assert x_a.shape[1] == len(content)
    assert not JUDGMENT_FEATURES & set(seeing.feature_names)


def test_feature_names_must_be_known_and_in_column_order(encoder) -> None:
    none = pd.DataFrame({s.QUERY_ID: [], s.QUERY: [], s.PRODUCT_ID: [], s.RELEVANCE: []})
    with pytest.raises(ValueError, match="subset of FEATURE_NAMES"):
        _model_with(encoder, none, ("dense", "bm25"))
    with pytest.raises(ValueError, match="subset of FEATURE_NAMES"):
        _model_with(encoder, none, ("bm25", "clicks"))

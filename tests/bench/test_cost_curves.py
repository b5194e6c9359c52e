"""bench/cost_curves.py at toy scale: the measuring code stays right without running the real curves."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bench import cost_curves as cc

ANN = SimpleNamespace(hnsw_m=16, ef_construction=64, ef_search=64)


@pytest.fixture(scope="module")
def catalog() -> np.ndarray:
    return cc.toy_catalog(n=600, dim=16, seed=0)


def test_copies_are_seeded_perturbations_of_the_real_vectors(catalog):
    cat = cc.Catalog(catalog, copies=3, sigma=0.03, seed=0)
    assert cat.n == 1800 and cat.dim == 16
    assert cat.chunk(0) is catalog  # copy 0 is the real catalog itself
    one = cat.chunk(1)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(one, cat.chunk(1))  # same seed, same copy
    assert not np.allclose(one, cat.chunk(2))
    cos = np.sum(one * catalog, axis=1)
    assert 0.8 < cos.min() and cos.max() < 1.0  # near its source, never the same vector


def test_chunked_ground_truth_equals_brute_force(catalog):
    cat = cc.Catalog(catalog, copies=3)
    queries = cc.toy_catalog(n=7, dim=16, seed=5)
    everything = np.concatenate(list(cat.chunks()))
    expected = np.argsort(-(queries @ everything.T), axis=1, kind="stable")[:, :50]
    found = cc.exact_topk(cat, queries, k=50)
    assert cc.recall_at_k(found, expected) == 1.0
    assert cc.recall_at_k(found[:, :25], expected[:, 25:50]) == 0.0


def test_index_costs_rows(catalog):
    probes = cc.toy_catalog(n=20, dim=16, seed=9)
    rows = cc.run_index(catalog, probes, [1, 2], ANN, latency_queries=10)["index"]
    by = {(r["scale"], r["index"]): r for r in rows}
    assert {r["scale"] for r in rows} == {1, 2}
    exact = by[(1, "exact")]
    assert exact["recall_at_100"] == 1.0 and exact["memory_mib"] == pytest.approx(600 * 16 * 4 / cc.MIB, abs=0.05)
    hnsw = [r for r in rows if r["kind"] == "hnsw"]
    assert hnsw and all(r["recall_at_100"] > 0.8 for r in hnsw)
    ivf = [r for r in rows if r["kind"] == "ivfpq"]
    assert len(ivf) == 4 and all(0 < r["recall_at_100"] <= 1 for r in ivf)
    assert all(r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in rows)
    text = cc.print_tables({"index": rows, "hnsw_extrapolation": cc.hnsw_extrapolation(rows, len(catalog))})
    assert text.count("\n| 1x |") + text.count("\n| 2x |") == len(rows)


def test_hnsw_extrapolation_is_n_log_n():
    rows = [
        {"kind": "hnsw", "index": "hnsw(M=32,efC=200,efS=128)", "scale": 1, "n": 1000, "build_cpu_s": 20.0,
         "memory_mib": 2.0},
        {"kind": "hnsw", "index": "hnsw(M=16,efC=40,efS=128)", "scale": 1, "n": 1000, "build_cpu_s": 5.0,
         "memory_mib": 1.0},
        {"kind": "hnsw", "index": "hnsw(M=16,efC=40,efS=128)", "scale": 10, "n": 10000, "build_cpu_s": 60.0,
         "memory_mib": 10.0},
    ]  # fmt: skip
    ex = cc.hnsw_extrapolation(rows, base_n=1000)
    a = 60.0 / (10000 * np.log(10000))
    assert ex["light_100x_build_h"] == round(a * 100_000 * np.log(100_000) / 3600, 2)
    assert ex["shipped_over_light_build_ratio"] == 4.0 and ex["ratio_scale"] == 1 and ex["scales"] == [100]
    assert "light_10x_build_h" not in ex  # measured there: nothing to extrapolate
    assert ex["light_100x_memory_gib"] == round(10.0 * cc.MIB / 10000 * 100_000 / cc.GIB, 2)


def test_scaled_event_log_has_more_customers_same_products():
    raw = pd.DataFrame(
        {
            "InvoiceNo": ["536365", "C536379", "536366"],
            "StockCode": ["85123A", "22633", "22632"],
            "CustomerID": [17850.0, 14527.0, None],
            "Quantity": [6, -1, 2],
        }
    )
    big = cc.scale_events(raw, 3)
    assert len(big) == 9 and set(big["StockCode"]) == set(raw["StockCode"])
    assert big["CustomerID"].nunique() == 3 * raw["CustomerID"].nunique()
    assert big["CustomerID"].isna().sum() == 3  # rows without a customer stay without one
    assert big["InvoiceNo"].str.startswith("C").sum() == 3  # cancellations stay cancellations
    assert big["InvoiceNo"].nunique() == 9


def test_synthetic_titles_use_the_real_vocabulary():
    titles = ["cordless drill 18v", "led light bulb", "drill bit set"]
    fake = cc.synthetic_titles(titles, 50, seed=1)
    vocab = {w for t in titles for w in t.split()}
    assert len(fake) == 50 and all(set(t.split()) <= vocab for t in fake)
    assert {len(t.split()) for t in fake} <= {3}

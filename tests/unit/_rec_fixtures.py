"""Tiny hand-built purchase logs for the recommendation unit tests (synthetic: edge cases only)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components import schema as s


def purchases(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Events from (user, product, day 'YYYY-MM-DD', basket) tuples: quantity 1, price 1.0."""
    return pd.DataFrame(
        {
            s.USER_ID: [r[0] for r in rows],
            s.PRODUCT_ID: [r[1] for r in rows],
            s.EVENT_TYPE: s.PURCHASE,
            s.TIMESTAMP: pd.to_datetime([r[2] for r in rows]),
            s.QUANTITY: 1.0,
            s.PRICE: 1.0,
            s.SESSION_ID: [r[3] for r in rows],
        }
    )


def shop_events() -> pd.DataFrame:
    """Six users, items a..g; `solo` bought once; item z is in the catalog but never bought."""
    rows = [
        ("ann", "a", "2011-01-01", "1"),
        ("ann", "b", "2011-01-01", "1"),
        ("ann", "a", "2011-02-01", "2"),
        ("ann", "c", "2011-02-01", "2"),
        ("ann", "a", "2011-03-01", "3"),
        ("bob", "a", "2011-01-05", "4"),
        ("bob", "b", "2011-01-05", "4"),
        ("bob", "d", "2011-02-05", "5"),
        ("cat", "b", "2011-01-10", "6"),
        ("cat", "c", "2011-01-10", "6"),
        ("cat", "e", "2011-03-10", "7"),
        ("cat", "e", "2011-03-20", "8"),
        ("dan", "d", "2011-02-10", "9"),
        ("dan", "e", "2011-02-10", "9"),
        ("dan", "f", "2011-02-10", "9"),
        ("eve", "f", "2011-03-01", "10"),
        ("eve", "g", "2011-03-01", "10"),
        ("eve", "a", "2011-03-02", "11"),
        ("solo", "c", "2011-03-15", "12"),
    ]
    return purchases(rows)


def shop_catalog() -> pd.DataFrame:
    ids = list("abcdefgz")
    return pd.DataFrame(
        {
            s.PRODUCT_ID: ids,
            s.TITLE: [f"red heart item {i}" if i in "abz" else f"blue star thing {i}" for i in ids],
            s.PRICE: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        }
    )


def shop_text(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

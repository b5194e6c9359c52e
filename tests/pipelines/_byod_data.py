"""A small shop's own data, in the canonical schema, shaped unlike both shipped datasets (imported explicitly).

- catalog.csv: ids with leading zeros ("00012"); titles carry only the brand, the product type and a
  model code, while the colour and material a shopper asks for are in the description (plus brand
  and category columns); three descriptions end with a vendor contact line (e-mail and phone).
- queries.csv / judgments.csv: "<colour> <material> <type>" queries judged on a 0..4 scale, relevant
  from 3: the exact product 4, same type and material 3, same type and colour 2, same type 1,
  other products 0.
- events.csv: purchases in 2023 (not Online Retail's 2011), user ids with leading zeros, each user
  loyal to two product types.

Everything is derived from a seeded generator, so the files are the same on every run.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from components import schema as s

TYPES = (
    "kettle lamp blender toaster chair stool shelf rug vase mirror "
    "clock basket pillow blanket mug bowl planter candle tray jar"
).split()
MATERIALS = "walnut copper linen marble bamboo ceramic wool brass oak glass".split()
COLOURS = "crimson teal ivory amber slate olive coral indigo sand plum".split()
KITCHEN = {"kettle", "blender", "toaster", "mug", "bowl"}
BRANDS = ["Nordvik", "Halden", "Casara", "Brightwell", "Oakmere", "Lumen & Co"]
SCALE = {"min": 0.0, "max": 4.0, "relevant_from": 3.0}  # data.search.relevance of this data
CONTACT = "Vendor contact: sales@{brand}.example or 555-010-{n:04d}."


def byod_product(catalog: pd.DataFrame, colour: str, material: str, kind: str) -> str:
    """The id of the one product of that colour, material and type (what a query for it should find)."""
    hit = catalog[catalog[s.DESCRIPTION].str.contains(f"{colour} {material} {kind}", regex=False)]
    return str(hit[s.PRODUCT_ID].iloc[0])


def write_byod_data(
    folder: Path, n_products: int = 300, n_queries: int = 120, n_users: int = 80, seed: int = 7
) -> Path:
    """Write catalog/queries/judgments/events .csv files into `folder`; returns it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    combos = list(itertools.product(TYPES, MATERIALS, COLOURS))
    picked = [combos[i] for i in sorted(rng.choice(len(combos), size=n_products, replace=False))]
    rows = []
    for i, (kind, material, colour) in enumerate(picked):
        pid = f"{i * 3 + 10:05d}"  # leading zeros: "00010", "00013", ...
        brand = BRANDS[i % len(BRANDS)]
        description = f"A {colour} {material} {kind}, made to last and easy to care for."
        if i in (5, 50, 150):
            description += " " + CONTACT.format(brand=brand.split()[0].lower(), n=i)
        rows.append(
            {
                s.PRODUCT_ID: pid,
                s.TITLE: f"{brand} {kind} {kind[:2].upper()}-{i:04d}",
                s.DESCRIPTION: description,
                s.BRAND: brand,
                s.CATEGORY: "home > " + ("kitchen" if kind in KITCHEN else "living"),
                s.PRICE: float(10 + (i % 17) * 5),
            }
        )
    catalog = pd.DataFrame(rows)
    catalog.to_csv(folder / "catalog.csv", index=False)

    by = {(k, m, c): pid for (k, m, c), pid in zip(picked, catalog[s.PRODUCT_ID], strict=True)}
    queries, judgments = [], []
    for q, ((kind, material, colour), pid) in enumerate(list(by.items())[:: max(1, len(by) // n_queries)][:n_queries]):
        qid = f"q{q:04d}"
        queries.append({s.QUERY_ID: qid, s.QUERY: f"{colour} {material} {kind}"})
        graded = {pid: 4.0}
        for (other_kind, m, c), p in by.items():
            if other_kind != kind or p == pid:
                continue
            grade = 3.0 if m == material else 2.0 if c == colour else 1.0
            if grade > 1.0 or list(graded.values()).count(1.0) < 2:  # at most two "same type only"
                graded[p] = grade
        others = [p for key, p in by.items() if key[0] != kind]
        for p in rng.choice(others, size=2, replace=False):
            graded.setdefault(str(p), 0.0)
        judgments += [{s.QUERY_ID: qid, s.PRODUCT_ID: p, s.RELEVANCE: g} for p, g in graded.items()]
    pd.DataFrame(queries).to_csv(folder / "queries.csv", index=False)
    pd.DataFrame(judgments).to_csv(folder / "judgments.csv", index=False)

    events = []
    start = pd.Timestamp("2023-01-02 09:00")
    for u in range(n_users):
        user = f"{u * 7 + 3:06d}"
        liked = rng.choice(TYPES, size=2, replace=False)
        mine = catalog[catalog[s.TITLE].str.split().str[-2].isin(liked)]
        for b in range(int(rng.integers(4, 9))):
            when = start + pd.Timedelta(days=int(rng.integers(0, 180)), hours=int(rng.integers(0, 10)))
            for p in rng.choice(mine[s.PRODUCT_ID].to_numpy(), size=int(rng.integers(2, 5)), replace=True):
                events.append(
                    {
                        s.USER_ID: user,
                        s.PRODUCT_ID: p,
                        s.EVENT_TYPE: s.PURCHASE,
                        s.TIMESTAMP: when,
                        s.QUANTITY: float(rng.integers(1, 4)),
                        s.PRICE: float(catalog.loc[catalog[s.PRODUCT_ID] == p, s.PRICE].iloc[0]),
                        s.SESSION_ID: f"{user}-{b}",
                    }
                )
    pd.DataFrame(events).sort_values(s.TIMESTAMP, kind="stable").to_csv(folder / "events.csv", index=False)
    return folder

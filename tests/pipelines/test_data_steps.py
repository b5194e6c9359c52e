"""ingest -> validate -> split on small slices of the real data, the bring-your-own-data path, and
deliberately corrupted copies that the data contract must catch and name."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import pandas as pd
import pytest

from artifacts.paths import Paths
from components import schema as s
from components.splits import TemporalFold
from pipelines import checks, ingest, split, validate
from pipelines.io import read_table
from tests.pipelines.data_slices import SMALL_CHECKS, small_params, write_mini_datasets


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory, homedepot_raw, online_retail_raw):
    return write_mini_datasets(tmp_path_factory.mktemp("datasets"), homedepot_raw, online_retail_raw)


@pytest.fixture
def ingested(paths, mini_data):
    params = small_params(mini_data)
    ingest.run(params, paths)
    return params


@pytest.fixture(scope="module")
def validated_root(tmp_path_factory, mini_data):
    """Ingested and validated once per module; corruption tests copy it."""
    root = tmp_path_factory.mktemp("validated")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("HATCHERY_PSEUDONYM_SALT", "test-salt")
        params = small_params(mini_data)
        ingest.run(params, Paths(root=root))
        validate.run(params, Paths(root=root))
    return root, params


def test_ingest_validate_split_on_real_slices(paths, ingested, online_retail_raw):
    validate.run(ingested, paths)
    counts = split.run(ingested, paths)

    events = read_table(paths.validated / "recommend", s.EVENTS)
    assert not events[s.USER_ID].str.fullmatch(r"\d+(\.0)?").any(), "raw customer ids leaked past ingestion"
    assert events[s.PRODUCT_ID].str.fullmatch(r"\d{5}[A-Z]{0,2}").all()
    assert (events[s.QUANTITY] > 0).all() and (events[s.PRICE] > 0).all()
    assert not events[s.SESSION_ID].str.startswith("C").any()

    test_q = pd.read_parquet(paths.split / "search" / "test.parquet")
    train_q = pd.read_parquet(paths.split / "search" / "train.parquet")
    assert set(test_q[s.QUERY_ID]).isdisjoint(train_q[s.QUERY_ID])
    history = pd.read_parquet(paths.split / "recommend" / "test" / "history.parquet")
    assert history[s.TIMESTAMP].max() < pd.Timestamp("2011-11-09")
    assert counts["recommend.test.evaluated_users"] > 0
    report = paths.reports / "data_checks" / "tables"
    assert (report / "index.html").exists() and (report / "results.json").exists()


def test_bring_your_own_canonical_csv_folder(paths, tmp_path):
    shop = tmp_path / "myshop"
    shop.mkdir()
    products = [f"SKU{i}" for i in range(30)]
    pd.DataFrame({s.PRODUCT_ID: products, s.TITLE: [f"garden hose {i} ft" for i in range(30)], s.PRICE: 9.5}).to_csv(
        shop / "catalog.csv", index=False
    )
    queries = pd.DataFrame({s.QUERY_ID: [f"q{i}" for i in range(40)], s.QUERY: [f"hose {i}" for i in range(40)]})
    queries.to_csv(shop / "queries.csv", index=False)
    pd.DataFrame(
        {
            s.QUERY_ID: [f"q{i % 40}" for i in range(120)],
            s.PRODUCT_ID: [products[(i * 7) % 30] for i in range(120)],
            s.RELEVANCE: [1.0 + (i % 5) / 2 for i in range(120)],
        }
    ).drop_duplicates([s.QUERY_ID, s.PRODUCT_ID]).to_csv(shop / "judgments.csv", index=False)
    pd.DataFrame(
        {
            s.USER_ID: [f"customer-{i % 12}" for i in range(400)],
            s.PRODUCT_ID: [products[i % 30] for i in range(400)],
            s.EVENT_TYPE: "purchase",
            s.TIMESTAMP: pd.date_range("2024-01-01", periods=400, freq="9h"),
            s.QUANTITY: 1,
            s.PRICE: 9.5,
        }
    ).to_parquet(shop / "events.parquet", index=False)

    params = small_params(
        shop,
        data={
            "search": {"source": "canonical", "path": str(shop)},
            "recommend": {"source": "canonical", "path": str(shop)},  # no cutoffs: from the data
        },
    )
    ingest.run(params, paths)
    validate.run(params, paths)
    counts = split.run(params, paths)
    assert counts["search.test.judgments"] + counts["search.train.judgments"] + counts["search.valid.judgments"] > 0
    assert counts["recommend.test.window_events"] > 0
    events = read_table(paths.validated / "recommend", s.EVENTS)
    assert not events[s.USER_ID].str.startswith("customer-").any()


def _corrupt(paths, domain, table, change):
    path = paths.ingested / domain / f"{table}.parquet"
    frame = pd.read_parquet(path)
    change(frame).to_parquet(path, index=False)


def _null_title(f):
    f.loc[f.index[0], s.TITLE] = None
    return f


def _duplicate_product(f):
    return pd.concat([f, f.head(1)], ignore_index=True)


def _out_of_range(f):
    f.loc[f.index[:3], s.RELEVANCE] = 4.0
    return f


def _orphan_judgment(f):
    f.loc[f.index[0], s.PRODUCT_ID] = "no-such-product"
    return f


def _orphan_event(f):
    f.loc[f.index[0], s.PRODUCT_ID] = "99999Z"
    return f


def _mean_too_low(f):
    f[s.RELEVANCE] = 1.0  # every label at the scale's bottom: a misread scale, not a bad catalog
    return f


def _pii_query(f):
    f.loc[f.index[0], s.QUERY] = "call me 555-123-4567"
    return f


def _pii_title(f):
    f.loc[f.index[1], s.TITLE] = "drill, ask bob@example.com"
    return f


def _future_event(f):
    f.loc[f.index[0], s.TIMESTAMP] = pd.Timestamp("2099-01-01")
    return f


def _negative_quantity(f):
    f.loc[f.index[0], s.QUANTITY] = -5.0
    return f


REJECT_CATALOG_PII = {"checks": {**SMALL_CHECKS, "pii": {"catalog": "reject"}}}


@pytest.mark.parametrize(
    "domain,table,change,suite,expectation,key,overrides",
    [
        ("search", s.CATALOG, _null_title, "search_catalog", "expect_column_values_to_not_be_null", None, {}),
        ("search", s.CATALOG, _duplicate_product, "search_catalog", "expect_column_values_to_be_unique", None, {}),
        # The 1..4 catalog under the default 1..3 scale, and a label mean outside the band:
        # each message names the key that describes the data.
        (
            "search",
            s.JUDGMENTS,
            _out_of_range,
            "search_judgments",
            "expect_column_values_to_be_between",
            "data.search.relevance.min / .max",
            {},
        ),
        (
            "search",
            s.JUDGMENTS,
            _mean_too_low,
            "search_judgments",
            "expect_column_mean_to_be_between",
            "checks.relevance_mean_band",
            {},
        ),
        ("search", s.JUDGMENTS, _orphan_judgment, "search_judgments", "product_in_catalog", None, {}),
        ("recommend", s.EVENTS, _orphan_event, "recommend_events", "product_in_catalog", None, {}),
        ("search", s.QUERIES, _pii_query, "search_queries", "text_has_pii", "checks.pii.queries: redact", {}),
        (
            "search",
            s.CATALOG,
            _pii_title,
            "search_catalog",
            "text_has_pii",
            "checks.pii.catalog: redact",
            REJECT_CATALOG_PII,
        ),
        ("recommend", s.EVENTS, _future_event, "recommend_events", "expect_column_max_to_be_between", None, {}),
        ("recommend", s.EVENTS, _negative_quantity, "recommend_events", "quantity", None, {}),
    ],
)
def test_corrupted_tables_are_caught_named_and_publish_nothing(
    paths, validated_root, mini_data, domain, table, change, suite, expectation, key, overrides
):
    root, params = validated_root
    params = small_params(mini_data, **overrides) if overrides else params
    for sub in ("data", "mlflow.db"):
        (shutil.copytree if sub == "data" else shutil.copy)(root / sub, paths.root / sub)
    good = (paths.validated / domain / f"{table}.parquet").read_bytes()
    _corrupt(paths, domain, table, change)
    with pytest.raises(checks.DataCheckError) as err:
        validate.run(params, paths, now=datetime(2026, 11, 28))
    message = str(err.value)
    assert suite in message and expectation in message
    assert key is None or key in message, message
    assert "index.html" in message
    assert (paths.validated / domain / f"{table}.parquet").read_bytes() == good, "last good output was touched"
    results = (paths.reports / "data_checks" / "tables" / "results.json").read_text()
    assert '"success": false' in results


def test_leaked_query_is_caught_by_the_split_check(paths, mini_data):
    ingested = small_params(mini_data)
    queries = pd.DataFrame({s.QUERY_ID: ["q1", "q2"], s.QUERY: ["a", "b"], s.SPLIT: ["train", "test"]})
    row = {s.QUERY_ID: "q1", s.QUERY: "a", s.PRODUCT_ID: "p", s.RELEVANCE: 3.0}
    parts = {
        "train": pd.DataFrame([row]),
        "valid": pd.DataFrame([{**row, s.QUERY_ID: "q2"}]),
        "test": pd.DataFrame([row]),
    }
    with pytest.raises(checks.DataCheckError, match="search_split_leakage"):
        split.check_search_split(ingested, paths, queries, parts)


def test_test_window_event_in_training_history_is_caught(paths, mini_data):
    ingested = small_params(mini_data)
    fold = TemporalFold("test", datetime(2011, 11, 9), None)
    history = pd.DataFrame({s.TIMESTAMP: pd.to_datetime(["2011-11-01", "2011-11-10"])})
    window = pd.DataFrame({s.TIMESTAMP: pd.to_datetime(["2011-11-12"])})
    with pytest.raises(checks.DataCheckError, match="recommend_test_history"):
        split.check_recommend_split(ingested, paths, [fold], {"test": (history, window)})


def test_missing_dataset_dir_says_what_to_set(paths, tmp_path):
    params = small_params(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"data\.search\.path: .*nowhere.* is not a folder"):
        ingest.run(params, paths)


def test_contact_lines_in_product_text_are_redacted_reported_and_the_run_goes_on(paths, validated_root):
    root, params = validated_root  # default checks.pii: catalog redact, queries reject
    for sub in ("data", "mlflow.db"):
        (shutil.copytree if sub == "data" else shutil.copy)(root / sub, paths.root / sub)
    _corrupt(paths, "search", s.CATALOG, _pii_title)
    result = validate.run(params, paths, now=datetime(2026, 11, 28))
    assert result["success"]
    title = read_table(paths.validated / "search", s.CATALOG)[s.TITLE].iloc[1]
    assert title == "drill, ask [email]"
    (note,) = result["redactions"]
    assert (note["domain"], note["table"], note["column"], note["matches"], note["rows"]) == (
        "search",
        "catalog",
        "title",
        1,
        1,
    )
    assert note["sample_rows"][0][s.TITLE] == "drill, ask [email]"
    saved = json.loads((paths.reports / "data_checks" / "tables" / "results.json").read_text())
    assert saved["redactions"] == result["redactions"]
    # Tables without a redaction are published byte for byte as ingested.
    assert (paths.validated / "search" / "queries.parquet").read_bytes() == (
        paths.ingested / "search" / "queries.parquet"
    ).read_bytes()


def test_cutoffs_outside_the_data_fail_the_contract_with_the_data_range_not_a_traceback(
    paths, validated_root, mini_data, monkeypatch, caplog
):
    root, _ = validated_root
    for sub in ("data", "mlflow.db"):
        (shutil.copytree if sub == "data" else shutil.copy)(root / sub, paths.root / sub)
    params = small_params(
        mini_data,
        data={
            "search": {"source": "homedepot", "path": str(mini_data)},
            "recommend": {
                "source": "online_retail",
                "path": str(mini_data),
                "test_cutoff": "2023-06-01",
                "valid_cutoff": "2023-05-01",
            },
        },
    )
    with pytest.raises(checks.DataCheckError) as err:
        split.run(params, paths)
    message = str(err.value)
    assert "recommend_cutoffs" in message and "data.recommend.test_cutoff" in message
    assert "the events run from 2010-12-" in message and "to 2011-12-" in message
    assert "observed 0" not in message  # the empty windows would only repeat it
    monkeypatch.setattr(split, "load_params", lambda: params)
    monkeypatch.setattr(split, "Paths", lambda: paths)
    assert split.main() == 1  # `python -m pipelines.split` logs the summary and exits 1: no traceback
    assert "data.recommend.test_cutoff" in caplog.text


def test_csv_ids_keep_their_leading_zeros(tmp_path):
    (tmp_path / "catalog.csv").write_text("product_id,title,price\n00012,NA,2.5\n0007,lamp,\n")
    catalog = read_table(tmp_path, s.CATALOG)
    assert catalog[s.PRODUCT_ID].tolist() == ["00012", "0007"] and catalog[s.TITLE].tolist() == ["NA", "lamp"]
    assert catalog[s.PRICE].isna().tolist() == [False, True]

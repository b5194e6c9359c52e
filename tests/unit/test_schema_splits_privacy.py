from datetime import datetime

import pandas as pd
import pytest

from components import schema as s
from components.privacy import find_pii, mask_pii, pseudonym, pseudonymize, redact_pii
from components.splits import query_bucket, split_events, split_queries, temporal_folds


def test_normalize_query_lowercases_strips_and_collapses():
    assert s.normalize_query("  Angle   BRACKET\t") == "angle bracket"


def test_conform_names_missing_columns_and_casts_ids_to_strings():
    with pytest.raises(s.SchemaError, match="missing required column.*'title'"):
        s.conform(s.CATALOG, pd.DataFrame({s.PRODUCT_ID: [1]}))
    out = s.conform(s.CATALOG, pd.DataFrame({s.PRODUCT_ID: [100001.0, 2.0], s.TITLE: ["a", "b"]}))
    assert out[s.PRODUCT_ID].tolist() == ["100001", "2"]


def test_conform_rejects_non_numeric_relevance():
    frame = pd.DataFrame({s.QUERY_ID: ["q"], s.PRODUCT_ID: ["p"], s.RELEVANCE: ["high"]})
    with pytest.raises(s.SchemaError, match="relevance"):
        s.conform(s.JUDGMENTS, frame)


def test_query_bucket_is_md5_mod_10():
    import hashlib

    q = "angle bracket"
    assert query_bucket(q) == int(hashlib.md5(q.encode()).hexdigest(), 16) % 10


def test_split_queries_assigns_each_query_once_by_bucket():
    queries = pd.DataFrame({s.QUERY_ID: [f"q{i}" for i in range(200)], s.QUERY: [f"query {i}" for i in range(200)]})
    out = split_queries(queries)
    buckets = out[s.QUERY].map(query_bucket)
    assert (out.loc[buckets == 9, s.SPLIT] == "test").all()
    assert (out.loc[buckets == 8, s.SPLIT] == "valid").all()
    assert (out.loc[buckets < 8, s.SPLIT] == "train").all()


def test_temporal_folds_do_not_overlap_and_respect_cutoffs():
    ts = pd.to_datetime(
        ["2011-10-08 23:59", "2011-10-09 00:00", "2011-11-08 23:59", "2011-11-09 00:00", "2011-12-09 12:00"]
    )
    events = pd.DataFrame({s.TIMESTAMP: ts, s.USER_ID: list("abcde")})
    valid, test = temporal_folds(events, datetime(2011, 11, 9), datetime(2011, 10, 9))
    v_hist, v_win = split_events(events, valid)
    t_hist, t_win = split_events(events, test)
    assert v_hist[s.USER_ID].tolist() == ["a"]
    assert v_win[s.USER_ID].tolist() == ["b", "c"]  # the valid window stops before the test cutoff
    assert t_hist[s.USER_ID].tolist() == ["a", "b", "c"]
    assert t_win[s.USER_ID].tolist() == ["d", "e"]


def test_temporal_folds_derived_when_no_cutoffs():
    events = pd.DataFrame({s.TIMESTAMP: pd.date_range("2024-01-01", "2024-06-30 18:00", freq="D")})
    valid, test = temporal_folds(events, None, None)
    # The last 30 days (June) are the test window, the 30 before (from May 2) validation.
    assert test.cutoff == datetime(2024, 6, 1) and valid.cutoff == datetime(2024, 5, 2)
    valid, test = temporal_folds(events, None, None, window_days=7)
    assert test.cutoff == datetime(2024, 6, 24) and valid.cutoff == datetime(2024, 6, 17)
    assert len(split_events(events, test)[1]) == 7


def test_pseudonymize_is_stable_salted_and_one_to_one():
    ids = pd.Series([17850, 17850, 12345])
    a, b = pseudonymize(ids, "salt-1"), pseudonymize(ids, "salt-2")
    assert a[0] == a[1] and a[0] != a[2] and a[0] != b[0]
    assert "17850" not in a[0]
    with pytest.raises(ValueError):
        pseudonymize(ids, "")


@pytest.mark.parametrize(
    "text,hit",
    [
        ("write to jane.doe@example.com", True),
        ("call 555-123-4567 today", True),
        ("(555) 123-4567", True),
        ("+44 20 7946 0958", True),
        ("36 in. x 80 in. steel door", False),
        ("1-1/2 in. x 12 ft. pipe", False),
        ("HD1650 2-pack 120-volt", False),
        (None, False),
    ],
)
def test_find_pii(text, hit):
    assert find_pii(pd.Series([text])).tolist() == [hit]


def test_a_phone_number_ending_a_sentence_is_found():
    assert find_pii(pd.Series(["Vendor contact: 555-010-1234.", "model 555.123.4567.8"])).tolist() == [True, False]


def test_redact_masks_every_match_counts_them_and_keeps_the_rest():
    texts = pd.Series(
        ["oak stool. Contact sales@oak.example or 555-010-1234.", "36 in. x 80 in.", None], dtype="string"
    )
    masked, counts = redact_pii(texts)
    assert masked.tolist()[:2] == ["oak stool. Contact [email] or [phone].", "36 in. x 80 in."]
    assert pd.isna(masked.iloc[2]) and counts.tolist() == [2, 0, 0]
    assert not find_pii(masked).any()


def test_the_request_path_helpers_agree_with_the_pipelines_versions():
    """The service pseudonymises and masks one value at a time (pseudonym, mask_pii) without pandas; the
    pipelines do it per column: the same id must get the same pseudonym, the same text the same mask."""
    ids = pd.Series([17850, 12345, "abc", "0"])
    assert [pseudonym(i, "salt-1") for i in ids] == pseudonymize(ids, "salt-1").tolist()
    with pytest.raises(ValueError):
        pseudonym(17850, "")
    texts = ["oak stool. Contact sales@oak.example or 555-010-1234.", "mail a@b.co, a@b.co", "36 in. x 80 in.",
             "+44 20 7946 0958 or (555) 123-4567", "Vendor contact: 555-010-1234.", ""]  # fmt: skip
    assert [mask_pii(t) for t in texts] == redact_pii(pd.Series(texts))[0].tolist()


def test_product_text_joins_the_configured_fields_a_catalog_has():
    catalog = pd.DataFrame(
        {
            s.PRODUCT_ID: ["1", "2"],
            s.TITLE: ["oak stool", "lamp"],
            s.DESCRIPTION: ["a teal oak stool", None],
            s.BRAND: ["", "Lumen"],
        }
    )
    fields = [s.TITLE, s.BRAND, s.CATEGORY, s.DESCRIPTION]
    assert s.text_fields_present(catalog, fields) == [s.TITLE, s.BRAND, s.DESCRIPTION]  # no category column
    assert s.product_texts(catalog, fields) == ["oak stool a teal oak stool", "lamp Lumen"]
    titles_only = catalog[[s.PRODUCT_ID, s.TITLE]]
    assert s.product_texts(titles_only, fields) == titles_only[s.TITLE].tolist()  # exactly the titles

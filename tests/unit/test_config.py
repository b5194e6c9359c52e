import pytest
from pydantic import ValidationError

from artifacts.paths import REPO_ROOT
from components.config import ParamsError, apply_overrides, parse_params
from pipelines.common import load_params


def test_repository_params_parse():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.data.search.source == "homedepot"


def test_unknown_key_is_named_by_its_path():
    with pytest.raises(ParamsError, match=r"data\.search\.paht: unknown key"):
        parse_params({"data": {"search": {"source": "homedepot", "paht": "/x"}}})


def test_canonical_source_requires_a_path():
    with pytest.raises(ParamsError, match="needs 'path'"):
        parse_params({"data": {"search": {"source": "canonical"}}})


def test_overlapping_split_buckets_are_rejected():
    with pytest.raises(ParamsError, match="overlap"):
        parse_params({"split": {"search_valid_buckets": [9], "search_test_buckets": [9]}})


def test_params_are_frozen():
    params = parse_params({})
    with pytest.raises(ValidationError, match="frozen"):
        params.seed = 3


def test_dotted_overrides():
    raw = apply_overrides({"data": {"search": {"source": "homedepot"}}}, {"data.search.path": "/tmp/x", "seed": 4})
    assert raw == {"data": {"search": {"source": "homedepot", "path": "/tmp/x"}}, "seed": 4}


def test_both_domains_share_one_profile_shape():
    params = load_params(REPO_ROOT / "params.yaml")
    assert set(params.search.profiles) == set(params.recommend.profiles) == {"cpu", "gpu"}
    gpu = parse_params({"search": {"profile": "gpu"}, "recommend": {"profile": "gpu"}})
    assert gpu.search.training == gpu.search.profiles["gpu"] and gpu.search.training.train_product_tower
    assert gpu.recommend.training == gpu.recommend.profiles["gpu"] and gpu.recommend.training.mf.dim == 128


@pytest.mark.parametrize("domain", ["search", "recommend"])
def test_a_profile_missing_from_profiles_is_named(domain):
    with pytest.raises(ParamsError, match=rf"{domain}: .*profile 'gpu' not in profiles \['cpu'\]"):
        parse_params({domain: {"profile": "gpu", "profiles": {"cpu": {}}}})


def test_rollout_section_rejects_unknown_keys_like_the_others():
    with pytest.raises(ParamsError, match=r"rollout\.sesions: unknown key"):
        parse_params({"rollout": {"sesions": 10}})

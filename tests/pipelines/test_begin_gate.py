"""The rollout starts only a challenger the gate passed: an alias set by hand is refused."""

from __future__ import annotations

import pytest

from artifacts.integrity import BundleIntegrityError
from artifacts.registry import Registry
from tests.pipelines._mini_service import NAME, register


def test_begin_refuses_a_hand_set_challenger(paths) -> None:
    from pipelines import rollout
    from pipelines.requirements import load_charter

    register(paths, "good", "champion")
    by_hand = register(paths, "good")
    Registry(NAME, paths).client.set_registered_model_alias(NAME, "challenger", by_hand)
    with pytest.raises(BundleIntegrityError, match=f"v{by_hand} holds the `challenger` alias but has no gate pass"):
        rollout.begin(paths, load_charter("semantic_search"), "test")

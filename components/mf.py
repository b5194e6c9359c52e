"""Matrix factorisation for implicit feedback: BPR (Rendle et al. 2009) in PyTorch.

score(u, i) = <p_u, q_i> + b_i. Returned as plain arrays with the bias folded in (users get a
trailing 1, items their bias), so scoring anywhere is one dot product.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from components.config_recommend import MFParams
from components.encoder import autocast


def train_bpr(
    binary: sp.csr_matrix,
    config: MFParams,
    seed: int,
    device: torch.device | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit BPR on a binary (n_users, n_items) matrix.

    Each epoch visits every positive (u, i) once with one uniformly sampled negative j (a sampled
    j may be another positive of u: rare at this density and unbiased enough for BPR).
    Returns (users (n_users, dim + 1), items (n_items, dim + 1)) float32, score = users @ items.T.
    `should_stop` is polled after each epoch (a training budget): when it says so, training ends there.
    """
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    n_users, n_items = binary.shape
    coo = binary.tocoo()
    pos_u = torch.as_tensor(coo.row, dtype=torch.long)
    pos_i = torch.as_tensor(coo.col, dtype=torch.long)
    p = torch.nn.Parameter(torch.randn(n_users, config.dim, generator=gen) * 0.05)
    q = torch.nn.Parameter(torch.randn(n_items, config.dim, generator=gen) * 0.05)
    b = torch.nn.Parameter(torch.zeros(n_items))
    params = [p, q, b]
    for t in params:
        t.data = t.data.to(device)
    opt = torch.optim.Adam(params, lr=config.lr)
    n = len(pos_u)
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        neg_all = torch.randint(0, n_items, (n,), generator=gen)
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            u, i, j = pos_u[idx].to(device), pos_i[idx].to(device), neg_all[idx].to(device)
            with autocast(device):
                pu, qi, qj = p[u], q[i], q[j]
                x = (pu * (qi - qj)).sum(-1) + b[i] - b[j]
                loss = -torch.nn.functional.logsigmoid(x.float()).mean()
                loss = loss + config.reg * (pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if should_stop is not None and should_stop():
            break
    users = torch.cat([p.detach(), torch.ones(n_users, 1, device=device)], dim=1)
    items = torch.cat([q.detach(), b.detach()[:, None]], dim=1)
    return users.float().cpu().numpy(), items.float().cpu().numpy()


def mf_scores(users: np.ndarray, items: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), n_items) dot-product scores of the given user rows."""
    return users[rows] @ items.T

"""Data of the second batch of held-out cases: a tagging task and a synthetic graph.

Deterministic, like the zoo's other tasks: ``batch(i)`` is the same tensor on every run.
"""

from __future__ import annotations

from functools import lru_cache

import torch

#: Tokens and tags of the tagging task.
TAG_VOCAB, TAGS = 16, 4


def tagging_batch(i: int, length: int = 24, batch: int = 32,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence tagging that needs both directions: the tag at t is (x_{t−1} + x_{t+1}) mod 4
    (x outside the sequence counts as 0). A model that ignores the context scores ln 4.
    Returns ids (N, T) and tags (N, T)."""
    g = torch.Generator().manual_seed(seed * 100_003 + i + 11)
    ids = torch.randint(0, TAG_VOCAB, (batch, length), generator=g)
    pad = torch.nn.functional.pad(ids, (1, 1))
    return ids, (pad[:, :-2] + pad[:, 2:]) % TAGS


@lru_cache(maxsize=2)
def sbm_graph(nodes: int = 256, classes: int = 4, p_in: float = 0.08, p_out: float = 0.008,
              features: int = 16, noise: float = 2.0, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A stochastic block model (Holland et al. 1983): ``nodes`` split evenly into
    ``classes`` communities, an edge within a community with probability ``p_in``, across
    with ``p_out``. Node features: the community's random mean (unit norm × 1) plus Gaussian
    noise of std ``noise`` per feature, so a node's own features say little and its
    neighbourhood says much. Returns Â = D^-1/2 (A + I) D^-1/2 (Kipf & Welling 2017), the
    features (nodes, features) and the labels (nodes,)."""
    g = torch.Generator().manual_seed(seed + 424_242)
    y = torch.arange(nodes) % classes
    same = y[:, None] == y[None, :]
    p = torch.where(same, torch.tensor(p_in), torch.tensor(p_out))
    upper = torch.triu(torch.rand(nodes, nodes, generator=g) < p, 1)
    a = (upper | upper.T).float() + torch.eye(nodes)
    d = a.sum(1).rsqrt()
    adj = d[:, None] * a * d[None, :]
    means = torch.randn(classes, features, generator=g)
    means = means / means.norm(dim=1, keepdim=True) * 2.0
    x = means[y] + noise * torch.randn(nodes, features, generator=g)
    return adj, x, y


def graph_batch(i: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole graph (full-batch training, as Kipf & Welling 2017): (features, labels)."""
    _, x, y = sbm_graph()
    return x, y

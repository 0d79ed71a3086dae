"""Next-token selection: greedy at temperature 0, else temperature / top-k / top-p."""
from __future__ import annotations

import numpy as np

from .errors import EdgecError


def check_options(temperature: float, top_k: int, top_p: float) -> None:
    if not temperature >= 0:  # NaN too: it would pass `< 0`, then poison every probability
        raise EdgecError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise EdgecError(f"top-k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise EdgecError(f"top-p must be in (0, 1], got {top_p}")


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0) -> int:
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(p.size, p=p))

"""Projectors: one global embedding (dim D) to k visual tokens in the LLM's hidden size H.

``expand`` (default) produces k distinct tokens: the first layer maps D to k·H, the second (MLP only)
is a token-wise H→H layer after a GELU, so the parameter count grows with k only in the first layer.
``repeat`` is the reference ReVision/Bunny design: LLaVA's ``mlp2x_gelu`` (D→H, GELU, H→H) applied
to the embedding repeated k times (576 in the reference), i.e. k identical tokens. ``patch`` reads k patch
tokens (a row of k·w values from a store of patch features) and maps each token on its own: w→H (GELU,
H→H for the MLP), LLaVA's projector over its vision tower's patches.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTORS = ("mlp", "linear")
TOKEN_MODES = ("expand", "repeat", "patch")


class Projector(nn.Module):
    def __init__(
        self, embed_dim: int, hidden_size: int, num_tokens: int, kind: str = "mlp", token_mode: str = "expand"
    ):
        super().__init__()
        if kind not in PROJECTORS:
            raise ValueError(f"unknown projector {kind!r}; choose from {', '.join(PROJECTORS)}")
        if token_mode not in TOKEN_MODES:
            raise ValueError(f"unknown token mode {token_mode!r}; choose from {', '.join(TOKEN_MODES)}")
        if num_tokens < 1:
            raise ValueError("num_tokens must be at least 1")
        self.embed_dim, self.hidden_size, self.num_tokens = embed_dim, hidden_size, num_tokens
        self.kind, self.token_mode = kind, token_mode
        if token_mode == "patch":
            if embed_dim % num_tokens:
                raise ValueError(f"patch rows of {embed_dim} values do not split into {num_tokens} tokens")
            self.first = nn.Linear(embed_dim // num_tokens, hidden_size)
        else:
            distinct = num_tokens if token_mode == "expand" else 1
            self.first = nn.Linear(embed_dim, distinct * hidden_size)
        self.second = nn.Linear(hidden_size, hidden_size) if kind == "mlp" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) → (B, k, H)."""
        if self.token_mode == "patch":
            x = x.view(x.shape[0], self.num_tokens, -1)
        h = self.first(x).view(x.shape[0], -1, self.hidden_size)
        if self.second is not None:
            h = self.second(nn.functional.gelu(h))
        if self.token_mode == "repeat":
            h = h.expand(-1, self.num_tokens, -1)
        return h

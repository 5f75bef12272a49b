"""The auto-decoder: the coordinate MLP and its table of training latents.

The table has one row per training key (a subject with SSL, a scan without) and, last, the
global latent of SGLA. Rows start at zero (the paper's initialisation, so the zero latent is an
"average" brain) and are bounded in norm by ``max_norm``: without a bound, a latent can grow to
encode the age of its scan, which is exactly what SSL and SGLA are meant to stop. The paper's code
bounds the L∞ norm (every component within ±max_norm); an L2 bound of the same value is √latent_size
times tighter and leaves the latents little room to tell subjects apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from brainkernels.nn.coordinate_mlp import CoordinateMLP, ReferenceCoordinateMLP

NORM_TYPES = (2.0, math.inf)


class AutoDecoder(nn.Module):
    """``network`` (fused :class:`CoordinateMLP` or :class:`ReferenceCoordinateMLP`, same
    state_dict) and ``latents``, an ``nn.Embedding`` of ``keys + 1`` rows (the last is global)."""

    def __init__(self, keys: int, *, dims: int = 3, latent_size: int = 128, width: int = 128, depth: int = 8,
                 activation: str = "wire", max_norm: float = 1.0, norm_type: float = math.inf,
                 fused: bool = True) -> None:
        super().__init__()
        if norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type must be 2 or inf; got {norm_type}")
        if keys < 1:
            raise ValueError(f"keys must be at least 1 (one latent per training subject or scan); got {keys}")
        network = CoordinateMLP if fused else ReferenceCoordinateMLP
        self.network = network(dims=dims, latent_size=latent_size, width=width, depth=depth, activation=activation)
        self.latents = nn.Embedding(keys + 1, latent_size, max_norm=max_norm, norm_type=norm_type)
        nn.init.zeros_(self.latents.weight)
        self.max_norm, self.norm_type = max_norm, norm_type

    @property
    def global_index(self) -> int:
        return self.latents.num_embeddings - 1

    def latent(self, index: int | Tensor) -> Tensor:
        """Row ``index`` of the table (``global_index`` for SGLA), renormalised to ``max_norm``."""
        index = torch.as_tensor(index, device=self.latents.weight.device).reshape(1)
        return self.latents(index)[0]

    def mean_latent(self, rows: Sequence[int]) -> Tensor:
        """The mean of the training latents in ``rows`` (bounded as the table bounds them): the
        "average" subject."""
        return self.latents(torch.as_tensor(rows, device=self.latents.weight.device)).mean(dim=0).detach()

    def forward(self, coords: Tensor, ages: Tensor, indices: Tensor) -> Tensor:
        """Training: (B, M) intensities at (B, M, dims) ``coords`` of B scans with normalised
        ``ages`` (B,) and latent ``indices`` (B,). One fused call per scan: the op folds one
        latent into the first layer's bias."""
        return torch.stack([self.network(coords[b], ages[b], self.latent(indices[b])) for b in range(len(indices))])

def bound_norm(latent: Tensor, max_norm: float, norm_type: float) -> Tensor:
    """``latent`` scaled down to ``norm_type``-norm ``max_norm`` if longer, as the table bounds its
    rows (for fitted latents); in L∞ its largest component then has magnitude ``max_norm``."""
    norm = torch.linalg.vector_norm(latent, ord=norm_type)
    return latent * (max_norm / norm) if norm > max_norm else latent

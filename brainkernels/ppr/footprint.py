"""Peak memory of PPR beside its autoencoder baseline at the paper's size (256^3), on the meta
device: the training step of the paper's Table 1 (256 patches of 31^3 vs whole volumes) and the
anomaly map of one volume (dense, tiled, vs one autoencoder pass)."""

from __future__ import annotations

import torch
from torch import nn

from brainkernels.memory import Footprint, measure_peak
from brainkernels.ppr.autoencoder import AutoEncoder
from brainkernels.ppr.infer import anomaly_map
from brainkernels.ppr.model import PPRNet

SIDE, PATCHES, M, TILE = 256, 256, 16, 64
TRAINING = "training step, 256^3 volumes"
INFERENCE = "anomaly map of a 256^3 volume"
# Table 1 of the paper (ICH, MB): the best models, PPR with 256 patches, the AE at its experimental
# batch size and at batch 1. The paper's m differs from ours (16), so compare orders, not digits.
PAPER_MB = {"PPR, 256 patches": 4452, "AE, batch 4": 12548, "AE, batch 1": 6730}


def ppr_training_step(model: nn.Module, patches: torch.Tensor, targets: torch.Tensor) -> None:
    torch.linalg.vector_norm(model(patches) - targets, dim=1).mean().backward()


def ae_training_step(model: nn.Module, volumes: torch.Tensor) -> None:
    (model(volumes) - volumes).abs().mean().backward()


def paper_scale_footprints() -> list[Footprint]:
    meta = torch.device("meta")
    ppr, autoencoder = PPRNet(m=M).to(meta), AutoEncoder(m=M).to(meta)
    patches = torch.empty(PATCHES, 1, 31, 31, 31, device=meta)
    targets = torch.empty(PATCHES, 3, device=meta)
    rows = [Footprint(TRAINING, f"PPR m={M}, {PATCHES} patches",
                      measure_peak(ppr_training_step, ppr, patches, targets).peak_bytes,
                      PAPER_MB["PPR, 256 patches"] * 10**6)]
    for batch in (4, 1):
        volumes = torch.empty(batch, 1, SIDE, SIDE, SIDE, device=meta)
        rows.append(Footprint(TRAINING, f"AE m={M}, batch {batch}",
                              measure_peak(ae_training_step, autoencoder, volumes).peak_bytes,
                              PAPER_MB[f"AE, batch {batch}"] * 10**6))
    volume = torch.empty(1, SIDE, SIDE, SIDE, device=meta)
    with torch.no_grad():
        rows.append(Footprint(INFERENCE, f"PPR m={M}, dense, tiles of {TILE}^3",
                              measure_peak(lambda: anomaly_map(ppr, volume, tile=TILE)).peak_bytes))
        rows.append(Footprint(INFERENCE, f"AE m={M}, one pass",
                              measure_peak(lambda: (autoencoder(volume[None]) - volume).abs()).peak_bytes))
    return rows

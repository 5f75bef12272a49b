"""Peak memory of the paper's U-Net at the paper's sizes, beside its peers, on the meta device.

Batch 1, bfloat16 weights and activations. Peers: the same U-Net with unfused plain-PyTorch
blocks, and MONAI's ``DiffusionModelUNet`` in the closest configuration (same channels per level,
2 residual blocks, 29 groups, no attention; concatenated skips, as MONAI builds it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from brainkernels.diffusion.unet import PAPER_CHANNEL_MULT, PAPER_CHANNELS, DiffusionUNet, Recompute
from brainkernels.memory import Footprint, measure_peak

IN_CHANNELS = 8  # x_t, four MR sequences, three coordinates
OURS, UNFUSED, MONAI = "brainkernels", "unfused PyTorch", "MONAI DiffusionModelUNet"
FULLRES_RECOMPUTED = "FullRes training step, 256^3, recompute=all"
# case: (volume edge, training step?, the U-Net's recompute mode), and the paper's Table 1 figure
# (GB) for it. MONAI's network has no recomputation: it sits out the recomputed case.
CASES = {"training step, 128^3 patch": (128, True, "none"), "sampling step, 256^3": (256, False, "none"),
         "FullRes training step, 256^3": (256, True, "none"), FULLRES_RECOMPUTED: (256, True, "all")}
PAPER_GB = {"training step, 128^3 patch": 10.6, "sampling step, 256^3": 24.0, "FullRes training step, 256^3": 78.5,
            FULLRES_RECOMPUTED: 78.5}


def build_unet(variant: str, channel_mult: tuple[int, ...] = PAPER_CHANNEL_MULT) -> nn.Module:
    """The network of ``variant`` (OURS, UNFUSED or MONAI); MONAI needs monai and einops."""
    if variant == MONAI:
        from monai.networks.nets import DiffusionModelUNet

        channels = tuple(PAPER_CHANNELS * m for m in channel_mult)
        return DiffusionModelUNet(spatial_dims=3, in_channels=IN_CHANNELS, out_channels=1, channels=channels,
                                  attention_levels=(False,) * len(channels), num_res_blocks=2,
                                  norm_num_groups=PAPER_CHANNELS, num_head_channels=PAPER_CHANNELS)
    return DiffusionUNet(IN_CHANNELS, channel_mult=channel_mult, fused=variant == OURS)


def network_step(network: nn.Module, side: int, train: bool, device: torch.device,
                 dtype: torch.dtype) -> Callable[[], torch.Tensor | None]:
    """One training step (forward + backward of a stand-in loss) or one sampling step (a network
    evaluation without gradients) on a ``side``^3 input."""
    shape = (1, IN_CHANNELS, side, side, side)
    x = torch.empty(shape, dtype=dtype, device=device) if device.type == "meta" else \
        torch.randn(shape, dtype=dtype).to(device)
    t = torch.full((1,), 500, device=device)

    def run():
        if train:
            network(x, t).float().square().mean().backward()
            return None
        with torch.no_grad():
            return network(x, t)
    return run


def paper_scale_footprints(variants: tuple[str, ...] = (OURS, UNFUSED, MONAI)) -> list[Footprint]:
    """Peak bytes of every case in CASES for each variant (exact, meta device)."""
    meta = torch.device("meta")
    rows = []
    for variant in variants:
        network = build_unet(variant).to(device=meta, dtype=torch.bfloat16)
        for case, (side, train, recompute) in CASES.items():
            if recompute != "none" and variant == MONAI:
                continue
            if variant != MONAI:
                network.recompute = recompute
            peak = measure_peak(network_step(network, side, train, meta, torch.bfloat16), device=meta).peak_bytes
            rows.append(Footprint(case, variant, peak, int(PAPER_GB[case] * 1e9)))
    return rows


def recomputed_forward_passes(recompute: Recompute, side: int, channel_mult: tuple[int, ...] = PAPER_CHANNEL_MULT
                              ) -> float:
    """The extra compute of a training step with ``recompute``, in forward passes of the network
    (FLOPs counted on the meta device: the step's FLOPs minus those without recomputation, over
    one forward pass's)."""
    network = build_unet(OURS, channel_mult).to(device="meta", dtype=torch.bfloat16)

    def flops(train: bool) -> int:
        with FlopCounterMode(display=False) as counter:
            network_step(network, side, train, torch.device("meta"), torch.bfloat16)()
        return counter.get_total_flops()

    stored = flops(True)
    network.recompute = recompute
    return (flops(True) - stored) / flops(False)

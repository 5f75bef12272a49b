"""brainkernels' modules in a model of your own, same weights, less memory:

1. ``convert_module`` on MONAI's 3D ``DiffusionModelUNet``: its ResNet blocks' GroupNorm + SiLU +
   convolution run fused, storing only their inputs for backward;
2. the fused ``CoordinateMLP`` in place of an ``nn.Sequential`` coordinate MLP (an INR that
   concatenates [age, x, y, z, latent] and applies ReLU layers).

Each part checks on the CPU that the outputs are unchanged, then prints the peak memory of a
training step on a larger volume before and after, measured exactly on PyTorch's meta device
(brainkernels.memory; no data and no GPU needed).

    pip install monai einops     # MONAI is not a dependency of brainkernels itself
    python python/examples/drop_in_modules.py [--side 16 --memory-side 128]
"""

import argparse
import copy

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from brainkernels.memory import format_bytes, measure_peak
from brainkernels.nn import CoordinateMLP, convert_module
from brainkernels.ops.coordinate_mlp import grid_coordinates

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--side", type=int, default=16, help="edge of the volume the outputs are compared on")
parser.add_argument("--memory-side", type=int, default=128, help="edge of the volume whose memory is measured")
arguments = parser.parse_args()
side, big = arguments.side, arguments.memory_side
meta = torch.device("meta")
torch.manual_seed(0)

# 1. A MONAI diffusion U-Net, converted in place.
# MONAI's middle block always has self-attention; four levels keep its (voxels x voxels) matrix small.
unet = DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(16, 32, 64, 64),
                          attention_levels=(False,) * 4, num_res_blocks=2, norm_num_groups=8, num_head_channels=64)
fused_unet = convert_module(copy.deepcopy(unet))
x, t = torch.randn(1, 1, side, side, side), torch.tensor([500])
print("U-Net outputs equal:", torch.allclose(unet(x, t), fused_unet(x, t), atol=1e-5))
x, t = torch.empty(1, 1, big, big, big, device=meta), torch.tensor([500], device=meta)
for name, model in (("MONAI", unet.to(meta)), ("converted", fused_unet.to(meta))):
    peak = measure_peak(lambda: model(x, t).square().mean().backward()).peak_bytes
    print(f"  {name:>9} U-Net training step, {big}^3: {format_bytes(peak)}")

# 2. A plain coordinate MLP and the fused module with its weights.
latent_size, width = 16, 64
layers = [nn.Linear(1 + 3 + latent_size, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1),
          nn.ReLU()]
mlp = nn.Sequential(*layers)
fused_mlp = CoordinateMLP(dims=3, latent_size=latent_size, width=width, depth=3, activation="relu", residual=False)
for layer, linear in zip(fused_mlp.layers, mlp[::2]):
    layer.linear.load_state_dict(linear.state_dict())



def plain(shape, latent, age=0.5):
    coords = grid_coordinates(shape, device=latent.device)  # the normalised coordinates the fused op makes itself
    inputs = torch.cat([torch.full((len(coords), 1), age, device=latent.device), coords,
                        latent.expand(len(coords), -1)], dim=1)
    return mlp(inputs)[:, 0].reshape(shape)


latent = torch.randn(latent_size, requires_grad=True)
print("MLP outputs equal:", torch.allclose(plain((side,) * 3, latent), fused_mlp((side,) * 3, 0.5, latent), atol=1e-5))
mlp.to(meta), fused_mlp.to(meta)
latent = torch.empty(latent_size, device=meta, requires_grad=True)
for name, run in (("nn.Sequential", plain), ("CoordinateMLP", lambda shape, latent: fused_mlp(shape, 0.5, latent))):
    peak = measure_peak(lambda: run((big,) * 3, latent).square().mean().backward()).peak_bytes
    print(f"  {name:>13} training step, {big}^3 voxels: {format_bytes(peak)}")

"""extract_patches3d: ours beside plain-PyTorch baselines, time and peak bytes.

Groups:
- PPR training step: 256 random 31^3 patches from a 256^3 volume; ``extra_info`` holds the
  effective bandwidth (bytes written, and as many read, per second), to set beside the device's
  memory bandwidth.
- dense patchwise inference: every voxel's patch of a 32^3 volume (64^3 with --bench-scale full),
  in chunks, each chunk reduced so that only one chunk is alive at a time.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainkernels.ops import extract_patches3d, extract_patches3d_reference

PATCH = 31


def pad_slices(volume, centers, size, padding_value=0.0):
    """Baseline: pad the volume once, then one slice per patch and a stack."""
    half = size // 2
    padded = F.pad(volume, (half, size - 1 - half) * 3, value=padding_value)
    return torch.stack([padded[:, z:z + size, y:y + size, x:x + size] for z, y, x in centers.tolist()])


def pad_unfold(volume, centers, size, padding_value=0.0):
    """Baseline: pad, take the sliding-window view with unfold, gather the windows."""
    half = size // 2
    padded = F.pad(volume, (half, size - 1 - half) * 3, value=padding_value)
    windows = padded.unfold(1, size, 1).unfold(2, size, 1).unfold(3, size, 1)  # (C, D, H, W, s, s, s) view
    return windows[:, centers[:, 0], centers[:, 1], centers[:, 2]].transpose(0, 1).contiguous()


IMPLEMENTATIONS = {
    "brainkernels": (extract_patches3d, False),
    "reference (indexing)": (extract_patches3d_reference, True),
    "baseline (pad + unfold)": (pad_unfold, True),
    "baseline (pad + slices)": (pad_slices, True),
}


def _volume(side: int, device: torch.device) -> torch.Tensor:
    return torch.randn(1, side, side, side, generator=torch.Generator().manual_seed(0)).to(device)


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_training_batch(compare, benchmark, device, name):
    volume = _volume(256, device)
    centers = torch.randint(0, 256, (256, 3), generator=torch.Generator().manual_seed(1)).to(device)
    fn, baseline = IMPLEMENTATIONS[name]
    out_bytes = 256 * PATCH**3 * volume.element_size()
    compare("256 patches 31^3 from 256^3", name, lambda: fn(volume, centers, PATCH), baseline=baseline,
            bytes_written=out_bytes, volume_shape=list(volume.shape), dtype=str(volume.dtype), patches=256)
    if benchmark.stats is not None:
        benchmark.extra_info["effective_bandwidth_GB_per_s"] = 2 * out_bytes / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("name", ["brainkernels", "reference (indexing)", "baseline (pad + unfold)"])
def test_dense_in_chunks(compare, device, scale, name):
    side = 64 if scale == "full" else 32
    chunk = 2048
    volume = _volume(side, device)
    axis = torch.arange(side, device=device)
    centers = torch.cartesian_prod(axis, axis, axis)
    fn, baseline = IMPLEMENTATIONS[name]

    def all_patches():
        total = volume.new_zeros(())
        for start in range(0, centers.shape[0], chunk):
            total += fn(volume, centers[start:start + chunk], PATCH).sum()
        return total

    compare(f"all patches 31^3 of {side}^3 in chunks of {chunk}", name, all_patches, baseline=baseline,
            bytes_written=centers.shape[0] * PATCH**3 * volume.element_size(), volume_shape=list(volume.shape),
            dtype=str(volume.dtype), patches=centers.shape[0])

"""coordinate_mlp: the fused INR beside the plain-PyTorch network as the paper's code runs it
(expand + concatenate + MLP, activations stored by autograd), time and peak bytes in one run.

The paper's network throughout: WIRE, width 128, depth 8, latent 128, omega = scale = 10, full
residual (232,450 parameters), float32. Groups:

- forward of a 32^3 grid (64^3 with --bench-scale full): fused, reference eager, reference under
  torch.compile (compiled before timing; its peak is that of the eager graph, because Dynamo does
  not trace under the storage tracker's dispatch mode).
- training forward + backward of that grid (latent and every weight require grad), and one
  latent-fitting step (the paper's inference: network fixed, only the latent requires grad),
  fused vs eager (compiled too at full scale).
- on the meta device, the paper's 256^3: evaluating the whole volume, and one latent-fitting step
  over all its voxels, fused vs the reference in micro-batches of 1 % of the volume (the paper's
  ``micro_batch_ratio``), the coordinate grid made once, outputs written into one preallocated
  volume; peak bytes only (a meta "time" is bookkeeping). Every micro-batch frees all it made but
  its output slice (and the latent's gradient), so the peak of the whole pass is the peak of any
  micro-batch: the reference runs three (first, middle, last) to keep the suite short.

``extra_info`` holds ``voxels_per_s`` beside the fixture's peak bytes. "brainkernels" runs the
widest instruction set the CPU has; "brainkernels (avx2)" and "(baseline)" force the narrower
paths (on an AVX-512 CPU, avx2 is the path main ran before AVX-512 kernels existed).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brainkernels import backends
from brainkernels.inr import footprint
from brainkernels.inr.footprint import paper_pair
from brainkernels.ops.coordinate_mlp import grid_coordinates

VOXELS = math.prod(footprint.VOLUME)

def _record_rate(benchmark, voxels: int) -> None:
    if benchmark.stats is not None:
        benchmark.extra_info["voxels_per_s"] = voxels / benchmark.stats.stats.median


def _side(scale: str) -> int:
    return 64 if scale == "full" else 32


FUSED = ["brainkernels", "brainkernels (avx2)", "brainkernels (baseline)"]


def _forced_isa(name: str, fn):
    """``fn`` with the instruction set a "brainkernels (isa)" name forces (skipped where the CPU lacks it)."""
    if "(" not in name or not name.startswith("brainkernels"):
        return fn
    isa = name[name.index("(") + 1:-1]
    if not backends.cpu_isa_runs(isa):
        pytest.skip(f"this CPU cannot run {isa}")
    if backends.cpu_isa() == isa:
        pytest.skip(f"{isa} is this CPU's default: the 'brainkernels' row")

    def run():
        with backends.use_cpu_isa(isa):
            return fn()

    return run


@pytest.mark.parametrize("name", [*FUSED, "reference (eager)", "reference (torch.compile)"])
def test_forward(compare, benchmark, device, scale, name):
    side = _side(scale)
    shape = (side, side, side)
    fused, reference, latent = paper_pair(device)
    coords = grid_coordinates(shape, device=device)  # the reference's input, made outside the timing
    if name.startswith("brainkernels"):
        def run():
            with torch.no_grad():
                return fused(shape, 0.5, latent)

        run = _forced_isa(name, run)
    else:
        model = torch.compile(reference) if "compile" in name else reference

        def run():
            with torch.no_grad():
                return model(coords, 0.5, latent)

        run()  # compile (or warm up) outside the measurement
    compare(f"INR forward {side}^3 (paper network, fp32)", name, run, baseline=name.startswith("reference"),
            voxels=math.prod(shape), output_bytes=4 * math.prod(shape))
    _record_rate(benchmark, math.prod(shape))


def _training_step(model, voxels, latent, target, weights: bool):
    model.requires_grad_(weights)
    latent = latent.clone().requires_grad_()

    def step():
        model.zero_grad(set_to_none=True)
        latent.grad = None
        F.mse_loss(model(voxels, 0.5, latent), target).backward()

    return step


@pytest.mark.parametrize("weights", [True, False], ids=["training", "latent fitting"])
@pytest.mark.parametrize("name", [*FUSED, "reference (eager)", "reference (torch.compile)"])
def test_forward_backward(compare, benchmark, device, scale, name, weights):
    if "compile" in name and scale != "full":
        pytest.skip("compiling the reference's backward takes most of a minute; --bench-scale full runs it")
    side = _side(scale)
    shape = (side, side, side)
    fused, reference, latent = paper_pair(device)
    target = torch.rand(shape, generator=torch.Generator().manual_seed(1)).to(device)
    if name.startswith("brainkernels"):
        step = _forced_isa(name, _training_step(fused, shape, latent, target, weights))
    else:
        model = torch.compile(reference) if "compile" in name else reference
        coords = grid_coordinates(shape, device=device)
        step = _training_step(model, coords, latent, target.flatten(), weights)
        step()
    what = "training step (latent + weights)" if weights else "latent-fitting step (network fixed)"
    compare(f"INR {what} {side}^3", name, step, baseline=name.startswith("reference"), voxels=math.prod(shape))
    _record_rate(benchmark, math.prod(shape))


def _require_cpu_tracker(device: torch.device) -> None:
    if device.type != "cpu":
        pytest.skip("the meta-device memory groups run with --bench-device cpu (the storage tracker)")


@pytest.mark.parametrize("name", [footprint.OURS, footprint.REFERENCE])
def test_memory_of_a_256_cube_evaluation(compare, device, name):
    _require_cpu_tracker(device)
    compare("INR evaluate 256^3 (meta: peak bytes only)", name, footprint.evaluation(name),
            baseline=name != footprint.OURS, memory_device="meta", output_bytes=4 * VOXELS,
            micro_batch_voxels=footprint.MICRO_BATCH)


@pytest.mark.parametrize("name", [footprint.OURS, footprint.REFERENCE])
def test_memory_of_a_256_cube_latent_fitting_step(compare, device, name):
    _require_cpu_tracker(device)
    compare("INR latent-fitting step over 256^3 (meta: peak bytes only)", name, footprint.latent_fitting_step(name),
            baseline=name != footprint.OURS, memory_device="meta", output_bytes=4 * VOXELS,
            micro_batch_voxels=footprint.MICRO_BATCH)

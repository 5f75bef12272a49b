"""Compile the Triton kernels, in the variants the ops launch, for a CUDA GPU on a machine with
none: ``python compile_triton_for_gpu.py ARCH`` (e.g. 90 for Hopper, 80 for Ampere).

The interpreter (how the tests run Triton on the CPU) executes a kernel as NumPy and accepts code
the GPU compiler rejects — a loop-carried variable whose shape changes, say — so a kernel can pass
every interpreted test and still fail on its first GPU launch (seen on an H200). Here the ops run
on CPU tensors with the Triton backend while each launch only compiles; the outputs are never read.
Compilation stops after Triton's own IRs (TTIR, where types and shapes are checked, and TTGIR, the
layouts for the target): LLVM, PTX and ptxas would take eight times as long and check our code
no further. Prints one line per case; exits non-zero at the first kernel that does not compile.
"""

from __future__ import annotations

import itertools
import sys

import torch
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from brainkernels import backends, use_backend
from brainkernels.nn import ReferenceCoordinateMLP
from brainkernels.ops import coordinate_mlp, extract_patches3d, group_norm_silu


class CompileOnlyDriver:
    """What ``JITFunction.run`` asks of the active driver before it compiles."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


class TritonIRsBuilt(Exception):
    """Raised in place of the LLVM stage: the kernel came through TTIR and TTGIR."""


def _stop_before_llvm(add_stages):
    def add(self, stages, options, language):
        add_stages(self, stages, options, language)

        def stop(src, metadata):
            raise TritonIRsBuilt

        stages["llir"] = stop

    return add


def compile_instead_of_launching(arch: int) -> list[str]:
    driver.set_active(CompileOnlyDriver(arch))
    CUDABackend.add_stages = _stop_before_llvm(CUDABackend.add_stages)
    backends.triton_interpreted = lambda: True  # lets the ops pick Triton for CPU tensors
    compiled: list[str] = []
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        try:
            run(self, *args, grid=grid, warmup=True, **kwargs)
        except TritonIRsBuilt:
            compiled.append(self.fn.__name__)
        else:
            raise AssertionError(f"{self.fn.__name__} was not compiled (found in Triton's cache?)")

    JITFunction.run = compile_only
    return compiled


def extract_patches_cases():
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        volume = torch.rand(2, 9, 10, 11, dtype=dtype, requires_grad=True)
        patches = extract_patches3d(volume, torch.tensor([[0, 4, 10], [8, -3, 5]]), 5)
        patches.sum().backward()
        yield f"extract_patches3d {dtype}"


def group_norm_cases():
    for dtype, skip, activation in ((torch.float32, False, "silu"), (torch.bfloat16, True, "silu"),
                                    (torch.float16, True, "none"), (torch.float32, True, "none")):
        h = torch.randn(2, 8, 4, 5, 6, dtype=dtype, requires_grad=True)
        weight = torch.ones(8, dtype=dtype, requires_grad=True)
        bias = torch.zeros(8, dtype=dtype, requires_grad=True)
        s = torch.randn_like(h, requires_grad=True) if skip else None
        group_norm_silu(h, 4, weight, bias, skip=s, activation=activation).float().sum().backward()
        yield f"group_norm_silu {dtype} skip={skip} {activation}"


def coordinate_mlp_cases():
    # Every dtype, activation, residual or not, depth 2 (no hidden layer) and more, 2 and 3 dims.
    for dtype, activation, residual, depth, dims, width in (
            (torch.float32, "wire", True, 8, 3, 128),  # the paper's network
            (torch.float32, "siren", False, 3, 2, 7),
            (torch.bfloat16, "siren", False, 2, 3, 24),
            (torch.bfloat16, "wire", False, 3, 3, 24),
            (torch.float64, "relu", True, 3, 2, 24),
            (torch.float64, "wire", True, 2, 3, 24)):
        yield from _coordinate_mlp(dtype, activation, residual, depth, dims, width)


def _coordinate_mlp(dtype, activation, residual, depth, dims, width):
    model = ReferenceCoordinateMLP(dims, 5, width, depth, activation, 3.0, 2.0, residual, dtype=torch.float64)
    weights, biases = model.weights_and_biases()
    weights = [w.detach().to(dtype).requires_grad_() for w in weights]
    biases = [b.detach().to(dtype).requires_grad_() for b in biases]
    latent = torch.randn(5, dtype=dtype, requires_grad=True)
    age = torch.tensor(0.5, dtype=dtype)
    points = torch.rand(40, dims, dtype=dtype, requires_grad=True)
    grid = (4, 5, 6) if dims == 3 else (4, 5)
    for voxels in (grid, points):
        out = coordinate_mlp(voxels, age, latent, weights, biases, activation=activation, residual=residual)
        out.float().sum().backward()
    # Latent fitting: no weight gradients, so the backward takes its other branch.
    frozen = [w.detach() for w in weights], [b.detach() for b in biases]
    coordinate_mlp(grid, age, latent, *frozen, activation=activation, residual=residual).float().sum().backward()
    yield f"coordinate_mlp {dtype} {activation} residual={residual} depth={depth} dims={dims} width={width}"


def main(arch: int) -> None:
    compiled = compile_instead_of_launching(arch)
    with use_backend("triton"):
        for case in itertools.chain(extract_patches_cases(), group_norm_cases(), coordinate_mlp_cases()):
            print(f"compiled for sm_{arch}: {case}", flush=True)
    print(f"{len(compiled)} launches compiled for sm_{arch}")


if __name__ == "__main__":
    main(int(sys.argv[1]))

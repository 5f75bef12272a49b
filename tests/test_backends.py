"""Backend selection, forcing, fallback, and the `brainkernels info` report."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import requires_extension

from brainkernels import _extension, backends, info, use_backend
from brainkernels.ops import extract_patches3d, extract_patches3d_reference

CPU = torch.device("cpu")


@requires_extension
def test_cpu_tensors_use_the_cpu_kernels_by_default(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert backends.resolve(CPU) == "cpu"


@requires_extension
def test_one_dtype_code_table_serves_every_op():
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    codes = {dtype: _extension.dtype_code(dtype) for dtype in dtypes}
    assert sorted(codes.values()) == [0, 1, 2, 3]
    with pytest.raises(TypeError, match="dtype must be one of float32, float64, float16, bfloat16.*int32"):
        _extension.dtype_code(torch.int32)


# Each op's binding with a code outside the table; no pointer is read before the check.
_UNKNOWN_CODE_CALLS = {
    "extract_patches3d": lambda c, code: c.extract_patches3d_forward_cpu(0, code, [1, 1, 1, 1], [1, 1, 1, 1], 0, 0,
                                                                          1, 0, 0, 1),
    "group_norm_silu": lambda c, code: c.group_norm_silu_moments_cpu(code, [1, 1, 1], 1, 0, [0, 0, 0], 0, [0, 0, 0],
                                                                      0, 0, 1),
    "coordinate_mlp": lambda c, code: c.coordinate_mlp_scratch_elements(
        (3, 8, 2, 0, 10.0, 10.0, True), ([1, 1, 1], 0, [0, 0], [0.0] * 3, [1.0] * 3, code, 32), False),
}


@requires_extension
@pytest.mark.parametrize("op", _UNKNOWN_CODE_CALLS)
def test_kernels_reject_an_unknown_dtype_code(op):
    with pytest.raises(ValueError, match=f"{op}: unknown dtype code 7"):
        _UNKNOWN_CODE_CALLS[op](_extension.load(), 7)


@requires_extension
def test_patch_gradients_of_a_half_dtype_are_refused_by_the_kernel():
    grad_code = _extension.dtype_code(torch.float16)  # the op casts to float32/float64 before the kernel
    with pytest.raises(ValueError, match="extract_patches3d: the backward takes float32 or float64"):
        _extension.load().extract_patches3d_backward_cpu(0, grad_code, [1, 1, 1, 1], 0, 0, 1, 0, 1)


def test_use_backend_nests_and_restores(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    with use_backend("reference"):
        assert backends.forced_backend() == ("reference", "use_backend()")
        with use_backend("triton"):
            assert backends.forced_backend()[0] == "triton"
        assert backends.resolve(CPU) == "reference"
    assert backends.forced_backend() is None


def test_unknown_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match=r"use_backend\(name\): unknown backend 'gpu'"):
        with use_backend("gpu"):
            pass
    monkeypatch.setenv(backends.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="environment variable BRAINKERNELS_BACKEND: unknown backend 'fast'"):
        backends.resolve(CPU)


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.resolve(CPU) == "reference"
    with use_backend("cpu"):  # the context manager wins over the environment
        assert backends.forced_backend() == ("cpu", "use_backend()")


def test_forcing_a_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    volume, centers = torch.randn(1, 4, 4, 4), torch.zeros(1, 3, dtype=torch.long)
    with use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' was forced .* cannot run on cpu"):
        extract_patches3d(volume, centers, 3)
    if not backends.triton_interpreted():
        with use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1|triton is not installed"):
            extract_patches3d(volume, centers, 3)


def test_reference_backend_runs_through_the_op(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    volume, centers = torch.randn(2, 5, 6, 7), torch.tensor([[0, 3, 9], [4, -2, 1]])
    with use_backend("reference"):
        assert torch.equal(extract_patches3d(volume, centers, 4), extract_patches3d_reference(volume, centers, 4))


def test_missing_extension_falls_back_to_the_reference_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(_extension, "_import", lambda: ImportError("simulated: no compiled module"))
    monkeypatch.setattr(_extension, "PACKAGE", tmp_path / "site-packages" / "brainkernels")  # installed
    backends._warn_fallback.cache_clear()
    with pytest.warns(RuntimeWarning, match="simulated: no compiled module.*plain-PyTorch reference"):
        assert backends.resolve(CPU) == "reference"
    with pytest.raises(ImportError, match=r"brainkernels\._C .* could not be imported: simulated.*pip install \."):
        _extension.load()
    with use_backend("cpu"), pytest.raises(RuntimeError, match="brainkernels._C could not be imported"):
        backends.resolve(CPU)
    backends._warn_fallback.cache_clear()


def test_a_source_tree_without_kernels_is_named_with_the_remedy(monkeypatch, tmp_path):
    """`pip install .` then `python -m brainkernels info` in the checkout imports the checkout."""
    checkout = tmp_path / "checkout"
    (checkout / "brainkernels").mkdir(parents=True)
    (checkout / "csrc").mkdir()
    (checkout / "pyproject.toml").write_text("[project]\nname = 'brainkernels'\n")
    assert _extension.source_tree(checkout / "brainkernels") == checkout
    assert _extension.source_tree(tmp_path / "site-packages" / "brainkernels") is None
    monkeypatch.setattr(_extension, "_import", lambda: ImportError("No module named 'brainkernels._C'"))
    monkeypatch.setattr(_extension, "PACKAGE", checkout / "brainkernels")
    expected = (f"you are importing brainkernels from its source tree at {checkout}, which holds no compiled "
                "kernels (a `pip install .` put them in the installed package): run from another folder, or "
                "install with `pip install -e .`")
    assert _extension.load_error().startswith(expected)
    backends._warn_fallback.cache_clear()
    with pytest.warns(RuntimeWarning, match="source tree at"):  # ops fall back to the reference, loudly
        assert expected in info.format_report(info.collect())
    backends._warn_fallback.cache_clear()
    with pytest.raises(ImportError, match="source tree at"):
        _extension.load()


def _info(cuda_devices: int) -> dict:
    devices = [{"device": "cpu", "name": "x86_64", "default_backend": "cpu"}]
    devices += [{"device": f"cuda:{index}", "name": "GPU", "default_backend": "cuda"} for index in range(cuda_devices)]
    return {"brainkernels": "0", "python": "3", "torch": "2", "torch_cuda": None, "forced_backend": None,
            "triton": {"version": None, "interpreter": False}, "devices": devices, "shipped_models": [],
            "extension": {"available": True, "error": None, "openmp_threads": 2, "cuda_built": True,
                          "cuda_architectures": "80,86,90"}}


def test_info_says_when_cuda_kernels_have_no_gpu():
    line = next(line for line in info.format_report(_info(0)).splitlines() if "cuda extension" in line)
    assert line.split(None, 2)[2] == "compiled for CUDA (architectures 80,86,90); no GPU visible"
    line = next(line for line in info.format_report(_info(1)).splitlines() if "cuda extension" in line)
    assert line.split(None, 2)[2] == "compiled for CUDA (architectures 80,86,90)"


def test_info_command_lists_the_backends(tmp_path):
    result = subprocess.run([sys.executable, "-m", "brainkernels", "info"], capture_output=True, text=True, check=True,
                            cwd=tmp_path)
    for line in ("cpu extension", "cuda extension", "triton", "reference", "devices:"):
        assert line in result.stdout
    report = json.loads(
        subprocess.run([sys.executable, "-m", "brainkernels", "info", "--json"], capture_output=True, text=True,
                       check=True, cwd=tmp_path).stdout
    )
    assert report["extension"]["available"] == _extension.available()
    assert report["devices"][0]["device"] == "cpu"
    assert report["devices"][0]["default_backend"] == ("cpu" if _extension.available() else "reference")

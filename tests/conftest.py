import pytest
import torch

from brainkernels import _extension, backends


def runnable_backends(device: torch.device) -> list[str]:
    """Backends that can run on ``device`` in this process, the reference included."""
    return [name for name in backends.BACKENDS if backends.unavailable_reason(name, device) is None]


def devices() -> list[torch.device]:
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found


BACKEND_CASES = [
    pytest.param(device, name, id=f"{device.type}-{name}")
    for device in devices()
    for name in runnable_backends(device)
    if name != "reference"
]

requires_extension = pytest.mark.skipif(not _extension.available(), reason="brainkernels._C not built")


def assert_within_twice_torch_error(ours: torch.Tensor, torch_in_dtype: torch.Tensor, exact: torch.Tensor) -> None:
    """The flash-attention rule: in a low-precision dtype a kernel may be off from the float64
    truth by at most twice PyTorch's own error in that dtype (plus one ulp-sized slack)."""
    exact = exact.double()
    torch_error = (torch_in_dtype.double() - exact).abs().max().item()
    our_error = (ours.double() - exact).abs().max().item()
    slack = torch.finfo(ours.dtype).eps * exact.abs().max().item()
    assert our_error <= 2 * torch_error + slack, f"error {our_error:.3g} vs PyTorch's {torch_error:.3g}"

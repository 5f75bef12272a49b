"""extract_patches3d: every backend against the plain-PyTorch reference, values and gradients."""

import pytest
import torch
from conftest import BACKEND_CASES, assert_within_twice_torch_error, requires_extension
from hypothesis import given, settings
from hypothesis import strategies as st

from brainkernels import _extension, use_backend
from brainkernels.memory import measure_peak
from brainkernels.nn import PatchExtractor3d
from brainkernels.ops import (
    MAX_PATCH_SIZE,
    extract_patches3d,
    extract_patches3d_backward_reference,
    extract_patches3d_reference,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SHAPES = [(1, 1, 1, 1), (2, 5, 23, 17), (3, 9, 4, 12)]
SIZES = [1, 2, 3, 4, 5, 8, 31]


def random_centers(shape, count, generator, margin=6, device="cpu"):
    """Centres inside, near and outside every face of the volume."""
    low = torch.tensor([-margin] * 3)
    high = torch.tensor(shape[1:]) + margin
    return (low + (torch.rand(count, 3, generator=generator) * (high - low + 1)).floor().long()).to(device)


def volume_of(shape, dtype, device, generator):
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("size", SIZES)
def test_forward_equals_reference(device, backend, dtype, shape, size):
    generator = torch.Generator().manual_seed(size * 1000 + sum(shape))
    volume = volume_of(shape, dtype, device, generator)
    centers = random_centers(shape, 7, generator, device=device)
    with use_backend(backend):
        ours = extract_patches3d(volume, centers, size, padding_value=-2.5)
    assert ours.shape == (7, shape[0], size, size, size) and ours.dtype == dtype and ours.is_contiguous()
    # Extraction is a copy: every backend must match bit for bit.
    assert torch.equal(ours, extract_patches3d_reference(volume, centers, size, -2.5))


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize(
    "layout",
    ["permuted", "strided", "channel_expanded", "offset"],
)
def test_forward_reads_any_strides(device, backend, layout):
    generator = torch.Generator().manual_seed(1)
    base = volume_of((2, 12, 13, 14), torch.float32, device, generator)
    volume = {
        "permuted": base.permute(0, 3, 1, 2),
        "strided": base[:, ::2, 1::3, ::2],
        "channel_expanded": base[:1].expand(3, -1, -1, -1),
        "offset": base[1:, 2:, 3:, 4:],
    }[layout]
    centers = random_centers(tuple(volume.shape), 9, generator, device=device)
    with use_backend(backend):
        ours = extract_patches3d(volume, centers, 5)
    assert torch.equal(ours, extract_patches3d_reference(volume, centers, 5))


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_special_padding_values_and_centers(device, backend):
    volume = torch.arange(4 * 5 * 6, dtype=torch.float32, device=device).reshape(1, 4, 5, 6)
    extreme = 2**62
    centers = torch.tensor(
        [[0, 0, 0], [3, 4, 5], [extreme, -extreme, 0], [-extreme, 2, extreme], [-3, 2, 2]], device=device
    )
    with use_backend(backend):
        nan_padded = extract_patches3d(volume, centers, 4, float("nan"))
        inf_padded = extract_patches3d(volume, centers, 3, float("-inf"))
    assert torch.allclose(nan_padded, extract_patches3d_reference(volume, centers, 4, float("nan")), equal_nan=True)
    assert torch.isnan(nan_padded[2]).all() and torch.isnan(nan_padded[3]).all()
    assert torch.equal(inf_padded, extract_patches3d_reference(volume, centers, 3, float("-inf")))
    # Even sizes: the centre is the patch's voxel size // 2.
    assert nan_padded[1, 0, 2, 2, 2] == volume[0, 3, 4, 5]
    assert torch.equal(nan_padded[1, 0, :3, :3, :3], volume[0, 1:4, 2:5, 3:6])
    assert torch.isnan(nan_padded[1, 0, 3]).all() and torch.isnan(nan_padded[1, 0, :, 3]).all()


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_empty_inputs(device, backend):
    volume = torch.randn(2, 6, 6, 6, device=device)
    no_centers = torch.zeros(0, 3, dtype=torch.long, device=device)
    flat = torch.randn(2, 0, 6, 6, device=device)
    with use_backend(backend):
        assert extract_patches3d(volume, no_centers, 3).shape == (0, 2, 3, 3, 3)
        padded = extract_patches3d(flat, torch.tensor([[0, 3, 3]], device=device), 3, 7.0)
    assert padded.shape == (1, 2, 3, 3, 3) and (padded == 7.0).all()


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [1, 4, 5])
def test_gradient_equals_reference(device, backend, dtype, size):
    generator = torch.Generator().manual_seed(size)
    shape = (2, 7, 6, 9)
    # Many overlapping patches so gradients really accumulate.
    centers = random_centers(shape, 40, generator, margin=3, device=device)
    grad = volume_of((40, 2, size, size, size), dtype, device, generator)
    volume = volume_of(shape, dtype, device, generator).requires_grad_()
    with use_backend(backend):
        extract_patches3d(volume, centers, size).backward(grad)
    volume64 = volume.detach().double().requires_grad_()
    extract_patches3d_reference(volume64, centers, size).backward(grad.double())
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(volume.grad, volume64.grad.to(dtype))
    else:
        volume_in_dtype = volume.detach().clone().requires_grad_()
        extract_patches3d_reference(volume_in_dtype, centers, size).backward(grad)
        assert_within_twice_torch_error(volume.grad, volume_in_dtype.grad, volume64.grad)


@requires_extension
def test_cpu_backward_does_not_depend_on_thread_count():
    generator = torch.Generator().manual_seed(3)
    centers = random_centers((1, 16, 16, 16), 200, generator)
    grad = torch.randn(200, 1, 7, 7, 7, generator=generator)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            with use_backend("cpu"):
                results.append(torch.ops.brainkernels.extract_patches3d_backward(grad, centers, 7, [1, 16, 16, 16]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@requires_extension
def test_double_backward_is_extraction_of_the_grad():
    generator = torch.Generator().manual_seed(4)
    volume = torch.randn(1, 6, 7, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    centers = random_centers((1, 6, 7, 8), 5, generator)
    torch.autograd.gradgradcheck(lambda v: extract_patches3d(v, centers, 3), (volume,))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(0, 9), st.integers(1, 9), st.integers(1, 9)),
    size=st.integers(1, 9),
    raw_centers=st.lists(st.tuples(*[st.integers(-40, 50)] * 3), min_size=0, max_size=12),
    padding_value=st.floats(-1e3, 1e3, allow_nan=False, width=32),
)
def test_property_cpu_equals_reference(shape, size, raw_centers, padding_value):
    """Random shapes and centres far outside the volume: values and float64 gradients match."""
    volume = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    centers = torch.tensor(raw_centers, dtype=torch.long).reshape(-1, 3)
    ours = extract_patches3d(volume, centers, size, padding_value)
    assert torch.equal(ours, extract_patches3d_reference(volume, centers, size, padding_value))
    grad = torch.randn_like(ours)
    (ours_grad,) = torch.autograd.grad(ours, volume, grad)
    torch.testing.assert_close(ours_grad, extract_patches3d_backward_reference(grad, centers, size, list(shape)))


SENTINEL = 12345.0


@requires_extension
@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
    size=st.integers(1, 8),
    raw_centers=st.lists(st.tuples(*[st.integers(-(2**62), 2**62)] * 3), min_size=1, max_size=6),
    near=st.lists(st.tuples(*[st.integers(-10, 16)] * 3), min_size=1, max_size=6),
)
def test_property_cpu_kernels_stay_inside_their_buffers(shape, size, raw_centers, near):
    """Call the raw kernels on views inside larger buffers: NaN around the volume must never be
    read, and the sentinels around the outputs must never be written."""
    kernels = _extension.load()
    centers = torch.tensor(raw_centers + near, dtype=torch.long)
    guarded = torch.full((shape[0] + 2, shape[1] + 2, shape[2] + 2, shape[3] + 2), float("nan"))
    volume = guarded[1:-1, 1:-1, 1:-1, 1:-1]
    volume.copy_(torch.randn(shape))
    count, margin = centers.shape[0] * shape[0] * size**3, 64
    out = torch.full((count + 2 * margin,), SENTINEL)
    kernels.extract_patches3d_forward_cpu(
        volume.data_ptr(), _extension.dtype_code(volume.dtype), list(shape), list(volume.stride()),
        centers.data_ptr(), centers.shape[0], size, 0, out[margin:].data_ptr(), 2,
    )
    patches = out[margin:-margin].view(centers.shape[0], shape[0], size, size, size)
    assert not torch.isnan(patches).any()
    assert (out[:margin] == SENTINEL).all() and (out[-margin:] == SENTINEL).all()
    assert torch.equal(patches, extract_patches3d_reference(volume, centers, size))

    grad_out = torch.full((volume.numel() + 2 * margin,), SENTINEL)
    grad_out[margin:-margin] = 0
    kernels.extract_patches3d_backward_cpu(
        patches.data_ptr(), _extension.dtype_code(patches.dtype), list(shape), centers.data_ptr(), centers.shape[0],
        size, grad_out[margin:].data_ptr(), 2,
    )
    assert (grad_out[:margin] == SENTINEL).all() and (grad_out[-margin:] == SENTINEL).all()


BAD_INPUTS = [
    ("volume", dict(volume=[[1.0]]), TypeError, "volume must be a torch.Tensor"),
    ("rank", dict(volume=torch.zeros(4, 4, 4)), ValueError, r"volume must have shape \(C, D, H, W\)"),
    ("int volume", dict(volume=torch.zeros(1, 4, 4, 4, dtype=torch.int32)), TypeError, "volume must be float"),
    ("centers type", dict(centers=[[1, 2, 3]]), TypeError, "centers must be a torch.Tensor"),
    ("centers shape", dict(centers=torch.zeros(4, 2, dtype=torch.long)), ValueError,
     r"centers must have shape \(N, 3\)"),
    ("centers device", dict(centers=torch.zeros(1, 3, dtype=torch.long, device="meta")), ValueError,
     "centers are on meta"),
    ("centers bool", dict(centers=torch.zeros(1, 3, dtype=torch.bool)), TypeError, "centers must hold integer"),
    ("centers fraction", dict(centers=torch.tensor([[1.5, 2.0, 3.0]])), ValueError, "centers must be integer voxel"),
    ("centers nan", dict(centers=torch.tensor([[float("nan"), 2.0, 3.0]])), ValueError, "centers contain NaN"),
    ("centers inf", dict(centers=torch.tensor([[float("inf"), 2.0, 3.0]])), ValueError, "centers contain NaN or inf"),
    ("size zero", dict(size=0), ValueError, "size must be between 1 and"),
    ("size huge", dict(size=MAX_PATCH_SIZE + 1), ValueError, "size must be between 1 and"),
    ("size float", dict(size=3.0), TypeError, "size must be an int"),
    ("size bool", dict(size=True), TypeError, "size must be an int"),
    ("padding", dict(padding_value="0"), TypeError, "padding_value must be a real number"),
]


@pytest.mark.parametrize("name,override,error,message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_names_the_argument(name, override, error, message):
    arguments = dict(volume=torch.zeros(1, 4, 4, 4), centers=torch.zeros(1, 3, dtype=torch.long), size=3,
                     padding_value=0.0)
    arguments.update(override)
    with pytest.raises(error, match=message):
        extract_patches3d(**arguments)


def test_integer_valued_float_centers_are_accepted():
    volume = torch.randn(1, 5, 5, 5)
    centers = torch.tensor([[1.0, 2.0, -3.0]])
    assert torch.equal(extract_patches3d(volume, centers, 3), extract_patches3d(volume, centers.long(), 3))


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("size", [1, 4, 5])
def test_opcheck(device, backend, size):
    generator = torch.Generator().manual_seed(size)
    volume = torch.randn(2, 6, 7, 5, dtype=torch.float64, generator=generator).to(device).requires_grad_()
    centers = random_centers((2, 6, 7, 5), 4, generator, device=device)
    grad = torch.randn(4, 2, size, size, size, dtype=torch.float64, generator=generator).to(device)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.brainkernels.extract_patches3d.default, (volume, centers, size, 0.5))
        torch.library.opcheck(torch.ops.brainkernels.extract_patches3d_backward.default,
                              (grad, centers, size, [2, 6, 7, 5]))


class PatchScorer(torch.nn.Module):
    """A small model in the shape of PPR training: conv, patch gather, conv head."""

    def __init__(self):
        super().__init__()
        self.smooth = torch.nn.Conv3d(1, 2, 3, padding=1)
        self.patches = PatchExtractor3d(5, padding_value=0.0)
        self.head = torch.nn.Conv3d(2, 3, 5)

    def forward(self, volume, centers):
        features = self.smooth(volume[None])[0]
        return self.head(self.patches(features, centers)).flatten(1)


@requires_extension
def test_model_compiles_without_graph_breaks():
    torch._dynamo.reset()
    model = PatchScorer()
    volume = torch.randn(1, 10, 11, 12)
    centers = torch.tensor([[0, 0, 0], [5, 5, 5], [9, 12, 3]])
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    eager_out = model(volume, centers)
    compiled_out = compiled(volume, centers)
    torch.testing.assert_close(compiled_out, eager_out)
    compiled_out.sum().backward()
    compiled_grad = model.smooth.weight.grad.clone()
    model.zero_grad()
    eager_out.sum().backward()
    torch.testing.assert_close(compiled_grad, model.smooth.weight.grad)


def test_module_matches_op_and_validates_size():
    volume, centers = torch.randn(2, 6, 6, 6), torch.tensor([[1, 2, 3]])
    module = PatchExtractor3d(4, padding_value=1.0)
    assert torch.equal(module(volume, centers), extract_patches3d(volume, centers, 4, 1.0))
    assert "size=4" in repr(module)
    with pytest.raises(ValueError, match="size must be an int between 1 and"):
        PatchExtractor3d(0)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_extraction_allocates_only_its_output(device):
    if device == "cpu" and not _extension.available():
        pytest.skip("brainkernels._C not built")
    volume = torch.zeros(2, 24, 24, 24, device=device)
    centers = torch.zeros(20, 3, dtype=torch.long, device=device)
    report = measure_peak(extract_patches3d, volume, centers, 9)
    assert report.method == "storage-tracker"
    assert report.peak_bytes == 20 * 2 * 9**3 * 4


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_backward_allocates_the_volume_gradient_and_one_patch_buffer(device):
    if device == "cpu" and not _extension.available():
        pytest.skip("brainkernels._C not built")
    volume = torch.zeros(2, 24, 24, 24, device=device, requires_grad=True)
    centers = torch.zeros(20, 3, dtype=torch.long, device=device)
    patches, grad = 20 * 2 * 9**3 * 4, torch.zeros(20, 2, 9, 9, 9, device=device)
    report = measure_peak(lambda v: torch.autograd.backward(extract_patches3d(v, centers, 9), grad), volume)
    assert report.peak_bytes == patches + volume.numel() * 4
    assert report.end_bytes == volume.numel() * 4  # volume.grad

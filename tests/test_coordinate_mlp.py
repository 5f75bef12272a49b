"""coordinate_mlp: every backend against the plain-PyTorch reference (expand + concatenate + MLP),
values and gradients; the module pair; memory; compile; meta; validation."""

import math

import numpy as np
import pytest
import torch
from conftest import BACKEND_CASES, assert_within_twice_torch_error, requires_extension
from hypothesis import given, settings
from hypothesis import strategies as st

from brainkernels import _extension, use_backend
from brainkernels.memory import measure_peak
from brainkernels.nn import CoordinateMLP, ReferenceCoordinateMLP
from brainkernels.ops.coordinate_mlp import (
    ACTIVATIONS,
    coordinate_mlp,
    coordinate_mlp_reference,
    grid_coordinates,
    grid_coordinates_at,
    num_partials,
    packed_size,
)

# This op has no CUDA C++ kernel: on CUDA tensors Triton runs.
BACKEND_CASES = [case for case in BACKEND_CASES if case.values[1] in ("cpu", "triton")]
GRIDS = {2: (9, 11), 3: (5, 7, 3)}  # odd sizes: blocks of 16 leave remainders
POINTS = 37


def network(dims, activation="wire", width=24, depth=4, latent_size=5, residual=True, omega=3.0, scale=2.0,
            dtype=torch.float64, device="cpu", seed=0):
    """A ReferenceCoordinateMLP whose ReLU output is mostly positive (so gradients are not all 0)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ReferenceCoordinateMLP(dims, latent_size, width, depth, activation, omega, scale, residual,
                                       dtype=torch.float64)
        if activation == "relu":
            with torch.no_grad():
                model.layers[-1].linear.bias.fill_(0.5)
        latent = 0.3 * torch.randn(latent_size, dtype=torch.float64)
    return model.to(device=device, dtype=dtype), latent.to(device=device, dtype=dtype)


def leaves(model, latent, age):
    weights, biases = model.weights_and_biases()
    weights = [w.detach().clone().requires_grad_() for w in weights]
    biases = [b.detach().clone().requires_grad_() for b in biases]
    return weights, biases, latent.detach().clone().requires_grad_(), age.detach().clone().requires_grad_()


def evaluate(fn, voxels, age, latent, weights, biases, grad, **options):
    """Output and the gradients of (latent, age, weights..., biases..., coords if they require grad)."""
    out = fn(voxels, age, latent, weights, biases, **options)
    inputs = [latent, age, *weights, *biases]
    if isinstance(voxels, torch.Tensor) and voxels.requires_grad:
        inputs.append(voxels)
    return out, torch.autograd.grad(out, inputs, grad)


def voxels_of(mode, dims, dtype, device, generator):
    if mode == "grid":
        return GRIDS[dims]
    coords = (torch.rand(POINTS, dims, generator=generator, dtype=torch.float64) - 0.5).to(dtype)
    if mode == "strided_points":  # a transposed view: rows are not contiguous
        coords = coords.t().contiguous().t()
    return coords.to(device).requires_grad_()


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
@pytest.mark.parametrize("mode", ["grid", "points", "strided_points"])
def test_values_and_gradients_match_reference(device, backend, activation, dims, residual, mode):
    generator = torch.Generator().manual_seed(dims * 10 + residual)
    model, latent = network(dims, activation, residual=residual, device=device)
    age = torch.tensor(0.37, dtype=torch.float64, device=device)
    voxels = voxels_of(mode, dims, torch.float64, device, generator)
    weights, biases, latent, age = leaves(model, latent, age)
    options = dict(activation=activation, omega=3.0, scale=2.0, residual=residual)
    shape = voxels if mode == "grid" else (POINTS,)
    grad = torch.randn(shape, generator=generator, dtype=torch.float64).to(device)
    expected, expected_grads = evaluate(coordinate_mlp_reference, voxels, age, latent, weights, biases, grad,
                                        **options)
    with use_backend(backend):
        ours, our_grads = evaluate(coordinate_mlp, voxels, age, latent, weights, biases, grad, block_size=16,
                                   **options)
    assert ours.shape == expected.shape and ours.dtype == torch.float64
    assert expected.abs().max() > 1e-2 and max(g.abs().max() for g in expected_grads) > 1e-2  # not a vacuous test
    torch.testing.assert_close(ours, expected)
    for got, want in zip(our_grads, expected_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("width,depth", [(16, 2), (7, 3)], ids=["no-hidden-layer", "width-7"])
def test_shallow_and_narrow_networks(device, backend, width, depth):
    model, latent = network(3, "wire", width=width, depth=depth, device=device)
    weights, biases, latent, age = leaves(model, latent, torch.tensor(0.8, dtype=torch.float64, device=device))
    grad = torch.randn(GRIDS[3], dtype=torch.float64, device=device)
    expected, expected_grads = evaluate(coordinate_mlp_reference, GRIDS[3], age, latent, weights, biases, grad,
                                        omega=3.0, scale=2.0)
    with use_backend(backend):
        ours, our_grads = evaluate(coordinate_mlp, GRIDS[3], age, latent, weights, biases, grad, block_size=16,
                                   omega=3.0, scale=2.0)
    assert max(g.abs().max() for g in expected_grads) > 1e-2
    torch.testing.assert_close(ours, expected)
    for got, want in zip(our_grads, expected_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("block_size", [1, 40, 200])
def test_block_size_does_not_change_the_result(device, backend, block_size):
    model, latent = network(3, "wire", device=device)
    weights, biases, latent, age = leaves(model, latent, torch.tensor(0.3, dtype=torch.float64, device=device))
    grad = torch.randn(GRIDS[3], dtype=torch.float64, device=device)
    expected, expected_grads = evaluate(coordinate_mlp_reference, GRIDS[3], age, latent, weights, biases, grad,
                                        omega=3.0, scale=2.0)
    with use_backend(backend):
        ours, our_grads = evaluate(coordinate_mlp, GRIDS[3], age, latent, weights, biases, grad,
                                   block_size=block_size, omega=3.0, scale=2.0)
    torch.testing.assert_close(ours, expected)
    for got, want in zip(our_grads, expected_grads):
        torch.testing.assert_close(got, want)


def exact_and_torch(model, latent, dtype, voxels, grad, activation, omega, scale):
    """The float64 truth on the parameters rounded to `dtype`, PyTorch's own result in `dtype`,
    and the `dtype` leaves (latent, age, weights, biases) for the kernel under test."""
    weights, biases = (list(p) for p in model.to(dtype).weights_and_biases())
    count, device = len(weights), latent.device
    rounded = [t.detach().double().requires_grad_() for t in weights + biases]
    latent64 = latent.to(dtype).double().requires_grad_()
    age64 = torch.tensor(0.4, dtype=torch.float64, device=device).float().double().requires_grad_()
    options = dict(activation=activation, omega=omega, scale=scale)
    exact = evaluate(coordinate_mlp_reference, voxels, age64, latent64, rounded[:count], rounded[count:],
                     grad.double(), **options)

    def in_dtype():
        tensors = [t.detach().clone().requires_grad_() for t in weights + biases]
        return (torch.tensor(0.4, device=device, requires_grad=True), latent.to(dtype).detach().requires_grad_(),
                tensors[:count], tensors[count:])

    by_torch = evaluate(coordinate_mlp_reference, voxels, *in_dtype(), grad.to(dtype), **options)
    return exact, by_torch, in_dtype()


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32_is_tight(device, backend, activation):
    """The paper's omega = scale = 10 amplifies every rounding. Values: within twice PyTorch's own
    float32 error. Gradients are sums over all voxels, so their rounding scales with the largest
    gradient, not with each entry: within 1e-5 of it."""
    model, latent = network(3, activation, width=32, depth=4, latent_size=8, omega=10.0, scale=10.0, device=device)
    grad = torch.randn((6, 7, 5), generator=torch.Generator().manual_seed(1)).to(device)
    (exact, exact_grads), (torch_out, _), leaves32 = exact_and_torch(model, latent, torch.float32, (6, 7, 5), grad,
                                                                     activation, 10.0, 10.0)
    with use_backend(backend):
        ours, our_grads = evaluate(coordinate_mlp, (6, 7, 5), *leaves32, grad, block_size=16,
                                   activation=activation, omega=10.0, scale=10.0)
    assert ours.dtype == torch.float32
    assert_within_twice_torch_error(ours, torch_out, exact)
    largest = max(g.abs().max() for g in exact_grads)
    for got, want in zip(our_grads, exact_grads):
        assert got.dtype == torch.float32 and (got.double() - want).abs().max() <= 1e-5 * largest


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bfloat16_within_twice_torch_error(device, backend, activation):
    model, latent = network(3, activation, width=32, depth=4, latent_size=8, omega=10.0, scale=10.0, device=device)
    grad = torch.randn((6, 7, 5), generator=torch.Generator().manual_seed(2)).to(device)
    (exact, exact_grads), (torch_out, torch_grads), leaves16 = exact_and_torch(
        model, latent, torch.bfloat16, (6, 7, 5), grad, activation, 10.0, 10.0)
    with use_backend(backend):
        ours, our_grads = evaluate(coordinate_mlp, (6, 7, 5), *leaves16, grad.bfloat16(), block_size=16,
                                   activation=activation, omega=10.0, scale=10.0)
    assert ours.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in our_grads[2:])
    assert_within_twice_torch_error(ours, torch_out, exact)
    for got, by_torch, want in zip(our_grads, torch_grads, exact_grads):
        if got.dtype == torch.bfloat16:  # the age is a float32 tensor
            assert_within_twice_torch_error(got, by_torch, want)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_latent_fitting_skips_weight_gradients(device, backend):
    """Only the latent (and age) require grad: the backward drops the weight products."""
    model, latent = network(3, "wire", device=device)
    weights, biases = (list(p) for p in model.weights_and_biases())
    latent = latent.clone().requires_grad_()
    age = torch.tensor(0.2, dtype=torch.float64, device=device, requires_grad=True)
    grad = torch.randn(GRIDS[3], dtype=torch.float64, device=device)
    with torch.no_grad():
        weights = [w.detach() for w in weights]
        biases = [b.detach() for b in biases]
    options = dict(omega=3.0, scale=2.0)
    expected = torch.autograd.grad(coordinate_mlp_reference(GRIDS[3], age, latent, weights, biases, **options),
                                   [latent, age], grad)
    with use_backend(backend):
        ours = torch.autograd.grad(coordinate_mlp(GRIDS[3], age, latent, weights, biases, block_size=16, **options),
                                   [latent, age], grad)
    assert expected[0].abs().max() > 1e-2
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_any_output_gradient_layout(device, backend):
    """Gradients that are expanded scalars or strided views are read in place."""
    model, latent = network(3, "siren", device=device)
    weights, biases, latent, age = leaves(model, latent, torch.tensor(0.5, dtype=torch.float64, device=device))
    base = torch.randn(7, 5, 3, dtype=torch.float64, device=device)
    for grad in (torch.ones((), dtype=torch.float64, device=device).expand(GRIDS[3]), base.permute(1, 0, 2)):
        expected = evaluate(coordinate_mlp_reference, GRIDS[3], age, latent, weights, biases, grad,
                            activation="siren", omega=3.0)[1]
        with use_backend(backend):
            ours = evaluate(coordinate_mlp, GRIDS[3], age, latent, weights, biases, grad, block_size=16,
                            activation="siren", omega=3.0)[1]
        for got, want in zip(ours, expected):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_no_voxels(device, backend):
    model, latent = network(2, "wire", device=device)
    weights, biases, latent, age = leaves(model, latent, torch.tensor(0.5, dtype=torch.float64, device=device))
    coords = torch.zeros(0, 2, dtype=torch.float64, device=device, requires_grad=True)
    with use_backend(backend):
        out = coordinate_mlp(coords, age, latent, weights, biases)
        assert out.shape == (0,)
        grads = torch.autograd.grad(out.sum(), [latent, *weights, coords])
    assert all((g == 0).all() for g in grads)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("mode", ["grid", "points"])
def test_opcheck(device, backend, mode):
    model, latent = network(3, "wire", width=16, depth=3, device=device)
    weights, biases = model.weights_and_biases()
    from brainkernels.ops.coordinate_mlp.api import _pack

    packed = _pack(0.3, latent, weights, biases, 3, 2).detach().requires_grad_()
    coords = None
    if mode == "points":
        coords = (torch.rand(21, 3, dtype=torch.float64) - 0.5).to(device).requires_grad_()
    grid = [] if coords is not None else [3, 4, 5]
    args = (packed, coords, grid, 3, 16, 3, "wire", 3.0, 2.0, True, 16, torch.float64, True)
    grad = torch.randn(21 if coords is not None else (3, 4, 5), dtype=torch.float64, device=device)
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.brainkernels.coordinate_mlp.default, args)
        # (no double backward: the backward op is checked on inputs that do not require grad)
        torch.library.opcheck(torch.ops.brainkernels.coordinate_mlp_backward.default,
                              (grad, *detached[:-1], True, coords is not None, 2))


# --- CPU-only properties ------------------------------------------------------------------------


@requires_extension
@settings(max_examples=40, deadline=None)
@given(
    dims=st.sampled_from([2, 3]),
    activation=st.sampled_from(ACTIVATIONS),
    width=st.integers(2, 20),
    depth=st.integers(2, 4),
    latent_size=st.integers(0, 6),
    residual=st.booleans(),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    block_size=st.integers(1, 70),
    points=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_cpu_equals_reference(dims, activation, width, depth, latent_size, residual, shape, block_size,
                                       points, seed):
    """Random architectures, grids, point sets and block sizes: float64 values and gradients match."""
    if residual and 1 + dims + latent_size == width:
        residual = False
    model, latent = network(dims, activation, width, depth, latent_size, residual, seed=seed)
    weights, biases, latent, age = leaves(model, latent, torch.tensor(0.6, dtype=torch.float64))
    generator = torch.Generator().manual_seed(seed)
    voxels = tuple(shape[:dims])
    if points:
        voxels = (torch.rand(math.prod(shape), dims, generator=generator, dtype=torch.float64) - 0.5)
        voxels.requires_grad_()
    options = dict(activation=activation, omega=3.0, scale=2.0, residual=residual)
    grad_shape = (voxels.shape[0],) if points else voxels
    grad = torch.randn(grad_shape, generator=generator, dtype=torch.float64)
    expected, expected_grads = evaluate(coordinate_mlp_reference, voxels, age, latent, weights, biases, grad,
                                        **options)
    with use_backend("cpu"):
        ours, our_grads = evaluate(coordinate_mlp, voxels, age, latent, weights, biases, grad, block_size=block_size,
                                   **options)
    torch.testing.assert_close(ours, expected)
    for got, want in zip(our_grads, expected_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode", ["grid", "points"])
def test_reference_backend_equals_oracle(mode):
    model, latent = network(3, "wire")
    weights, biases, latent, age = leaves(model, latent, torch.tensor(0.1, dtype=torch.float64))
    voxels = voxels_of(mode, 3, torch.float64, "cpu", torch.Generator().manual_seed(5))
    grad = torch.randn(GRIDS[3] if mode == "grid" else (POINTS,), dtype=torch.float64)
    expected, expected_grads = evaluate(coordinate_mlp_reference, voxels, age, latent, weights, biases, grad)
    with use_backend("reference"):
        ours, our_grads = evaluate(coordinate_mlp, voxels, age, latent, weights, biases, grad, block_size=40)
    torch.testing.assert_close(ours, expected)
    for got, want in zip(our_grads, expected_grads):
        torch.testing.assert_close(got, want)


@requires_extension
def test_cpu_backward_is_deterministic():
    model, latent = network(3, "wire", width=32, dtype=torch.float32)
    weights, biases, latent, age = leaves(model, latent, torch.tensor(0.3))
    grad = torch.randn(12, 13, 11)
    threads, results = torch.get_num_threads(), []
    try:
        for count in (2, 2, 1, 3):
            torch.set_num_threads(count)
            results.append(evaluate(coordinate_mlp, (12, 13, 11), age, latent, weights, biases, grad)[1])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1]))  # same thread count: bitwise
    largest = max(g.abs().max() for g in results[0])
    for other in results[2:]:  # other thread counts sum the partials in another grouping
        for a, b in zip(results[0], other):
            assert (a - b).abs().max() <= 1e-5 * largest


def test_grid_coordinates_follow_the_paper():
    """The paper's code: (arange(n) - n / 2) / max(shape), axis order = array order."""
    coords = grid_coordinates((4, 2, 3))
    assert coords.shape == (24, 3)
    torch.testing.assert_close(coords[0], torch.tensor([-2 / 4, -1 / 4, -1.5 / 4]))
    torch.testing.assert_close(coords[-1], torch.tensor([1 / 4, 0.0, 0.5 / 4]))
    torch.testing.assert_close(coords[1], torch.tensor([-2 / 4, -1 / 4, -0.5 / 4]))  # last axis fastest


@pytest.mark.parametrize("shape", [(4, 2, 3), (5, 7), (256, 256, 256)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_coordinates_of_sampled_voxels_follow_the_paper(shape, dtype):
    """grid_coordinates_at(shape, i): (index along each axis - n / 2) / max(shape), from the
    linear index alone (also the last voxel of a 256^3 grid, whose index needs more than 24 bits),
    and the rows of grid_coordinates where the whole table is small."""
    total = math.prod(shape)
    drawn = torch.randint(total, (50,), generator=torch.Generator().manual_seed(0))
    index = torch.cat([torch.tensor([0, total - 1]), drawn])
    per_axis = np.unravel_index(index.numpy(), shape)
    expected = torch.stack([(torch.from_numpy(i).double() - n / 2) / max(shape) for i, n in zip(per_axis, shape)],
                           dim=1).to(dtype)
    ours = grid_coordinates_at(shape, index, dtype)
    assert ours.dtype == dtype and torch.equal(ours, expected)
    if total < 1000:
        assert torch.equal(ours, grid_coordinates(shape, dtype)[index])


@pytest.mark.parametrize("indices,error,message", [
    (torch.tensor([0, 24]), IndexError, r"indices must lie in \[0, 24\) for grid_shape \(4, 2, 3\); got values from 0"),
    (torch.tensor([-1]), IndexError, "indices must lie in"),
    (torch.tensor([0.0]), TypeError, "indices must be a 1D integer tensor"),
    (torch.zeros(2, 2, dtype=torch.long), TypeError, "indices must be a 1D integer tensor"),
    ([0, 1], TypeError, "indices must be a 1D integer tensor"),
], ids=["past the end", "negative", "float", "2D", "list"])
def test_coordinates_of_bad_indices_are_refused(indices, error, message):
    with pytest.raises(error, match=message):
        grid_coordinates_at((4, 2, 3), indices)
    with pytest.raises(ValueError, match="grid_shape must have at least one axis"):
        grid_coordinates_at((), torch.tensor([0]))


def test_coordinates_on_the_meta_device_have_their_shape():
    assert grid_coordinates((4, 5, 6), device="meta").shape == (120, 3)
    assert grid_coordinates_at((4, 5, 6), torch.empty(7, dtype=torch.long, device="meta")).shape == (7, 3)


@requires_extension
def test_sampled_voxels_equal_the_grid():
    """Explicit coordinates from grid_coordinates give the grid's values exactly."""
    model, latent = network(3, "wire", dtype=torch.float32)
    weights, biases = model.weights_and_biases()
    with torch.no_grad():
        grid = coordinate_mlp((6, 5, 4), 0.5, latent, weights, biases)
        index = torch.tensor([0, 7, 33, 119, 64])
        sampled = coordinate_mlp(grid_coordinates((6, 5, 4))[index], 0.5, latent, weights, biases)
    assert torch.equal(sampled, grid.flatten()[index])


# --- modules --------------------------------------------------------------------------------------


def test_paper_configuration_has_232450_parameters():
    """2 * (132 * 128 + 128) + 6 * 2 * (128 * 128 + 128) + 2 * (128 + 1) (the paper's Table 2)."""
    for cls in (CoordinateMLP, ReferenceCoordinateMLP):
        assert sum(p.numel() for p in cls(device="meta").parameters()) == 232_450
        assert sum(p.numel() for p in cls(dims=2, device="meta").parameters()) == 232_194
    model = CoordinateMLP(device="meta")
    assert [tuple(p.shape) for p in model.layers[0].parameters()] == [(128, 132), (128,), (128, 132), (128,)]
    assert [tuple(p.shape) for p in model.layers[-1].parameters()] == [(1, 128), (1,), (1, 128), (1,)]
    assert len(model.layers) == 8
    assert "layers.7.scale.weight" in model.state_dict()


@requires_extension
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_weights_load_both_ways(activation):
    torch.manual_seed(0)
    fused = CoordinateMLP(3, 6, 20, 4, activation)
    plain = ReferenceCoordinateMLP(3, 6, 20, 4, activation)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    latent = 0.3 * torch.randn(6)
    plain.load_state_dict(fused.state_dict())
    torch.testing.assert_close(plain((5, 6, 7), 0.3, latent), fused((5, 6, 7), 0.3, latent), rtol=1e-5, atol=1e-5)
    fresh = CoordinateMLP(3, 6, 20, 4, activation)
    fresh.load_state_dict(plain.state_dict())
    assert torch.equal(fresh((5, 6, 7), 0.3, latent), fused((5, 6, 7), 0.3, latent))


def test_reference_module_equals_reference_function_and_micro_batches():
    plain, latent = network(2, "wire")
    weights, biases = plain.weights_and_biases()
    whole = coordinate_mlp_reference((9, 11), 0.3, latent, weights, biases, omega=3.0, scale=2.0)
    torch.testing.assert_close(plain((9, 11), 0.3, latent), whole)
    torch.testing.assert_close(plain((9, 11), 0.3, latent, block_size=10), whole)
    coords = torch.rand(13, 2, dtype=torch.float64)
    torch.testing.assert_close(plain(coords, torch.tensor(0.3, dtype=torch.float64), latent, block_size=4),
                               coordinate_mlp_reference(coords, 0.3, latent, weights, biases, omega=3.0, scale=2.0))


@requires_extension
def test_module_compiles_without_graph_breaks():
    torch._dynamo.reset()

    class LatentFit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inr = CoordinateMLP(dims=3, latent_size=4, width=16, depth=3)
            self.latent = torch.nn.Parameter(0.3 * torch.randn(4))

        def forward(self, coords, age):
            return self.inr(coords, age, self.latent), self.inr((4, 5, 3), age, self.latent)

    torch.manual_seed(0)
    model = LatentFit()
    coords, age = torch.rand(19, 3) - 0.5, torch.tensor(0.4)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    eager = model(coords, age)
    ours = compiled(coords, age)
    for got, want in zip(ours, eager):
        torch.testing.assert_close(got, want)
    (ours[0].sum() + ours[1].square().sum()).backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (eager[0].sum() + eager[1].square().sum()).backward()
    # The latent's gradient sums over every voxel of both calls; inductor orders those float32 sums
    # its own way (7e-6 relative apart on an Intel Xeon, exact on an AMD EPYC).
    for got, p in zip(compiled_grads, model.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=5e-5, atol=5e-5)


def test_meta_device_evaluates_a_256_cube_and_its_gradient():
    model = CoordinateMLP(device="meta")
    latent = torch.zeros(128, device="meta", requires_grad=True)
    out = model((256, 256, 256), torch.tensor(0.5, device="meta"), latent)
    assert out.shape == (256, 256, 256) and out.device.type == "meta"
    out.sum().backward()
    assert latent.grad.shape == (128,) and model.layers[3].freqs.weight.grad.shape == (128, 128)


def test_paper_scale_memory_is_the_output_volumes():
    """The paper's network on 256^3 (meta): evaluation takes the output and the packed parameters;
    a latent-fitting step (MSE over every voxel) the output, the loss gradient, and
    parameter-sized buffers. The paper's own micro-batched run needs several GiB here."""
    model = CoordinateMLP(device="meta").requires_grad_(False)
    latent = torch.zeros(128, device="meta", requires_grad=True)
    volume, target = 4 * 256**3, torch.empty(256, 256, 256, device="meta")
    packed_bytes = 4 * packed_size(3, 128, 8, "wire")
    with torch.no_grad():
        evaluation = measure_peak(lambda: model((256, 256, 256), 0.5, latent), device="meta")
    assert evaluation.peak_bytes == volume + packed_bytes

    def step():
        torch.nn.functional.mse_loss(model((256, 256, 256), 0.5, latent), target).backward()

    partials = num_partials(torch.device("meta"), 256**3)
    fitting = measure_peak(step, device="meta")
    assert fitting.peak_bytes <= 2 * volume + (partials + 2) * packed_bytes


# --- memory ----------------------------------------------------------------------------------------


def fused_model(device):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return CoordinateMLP(dims=3, latent_size=5, width=24, depth=4, device=device)


def skip_without_extension(device):
    if device == "cpu" and not _extension.available():
        pytest.skip("brainkernels._C not built")


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_forward_allocates_only_the_output_and_the_packed_parameters(device, training):
    """No activation is stored, not even for training: output + packed copy, whatever the grid."""
    skip_without_extension(device)
    model = fused_model(device).requires_grad_(training)
    latent = torch.zeros(5, device=device, requires_grad=training)
    packed_bytes = 4 * packed_size(3, 24, 4, "wire")
    for shape in ((8, 8, 8), (9, 13, 17)):
        with torch.set_grad_enabled(training):
            report = measure_peak(lambda: model(shape, 0.5, latent), device=device)
        assert report.peak_bytes == packed_bytes + 4 * math.prod(shape)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_backward_peak_does_not_grow_with_the_voxels(device):
    skip_without_extension(device)
    peaks = []
    for shape in ((8, 8, 8), (16, 16, 16)):
        model = fused_model(device)
        latent = torch.zeros(5, device=device, requires_grad=True)
        out = model(shape, 0.5, latent)
        grad = torch.ones((), device=device).expand(shape)
        report = measure_peak(lambda: torch.autograd.backward(out, grad), device=device)
        peaks.append(report.peak_bytes)
        parameters = sum(p.numel() for p in model.parameters())
    partials = num_partials(torch.device(device), 8**3)
    packed_bytes = 4 * packed_size(3, 24, 4, "wire")
    assert peaks[0] == peaks[1]
    # gradient partials (one per thread) + the packed gradient + parameter-sized bookkeeping
    assert peaks[0] <= partials * packed_bytes + 3 * 4 * parameters


def test_backward_peak_grows_only_by_the_coordinate_gradient():
    peaks = []
    for count in (500, 3000):
        model = fused_model("meta")
        latent = torch.zeros(5, device="meta", requires_grad=True)
        coords = torch.zeros(count, 3, device="meta", requires_grad=True)
        out = model(coords, 0.5, latent)
        grad = torch.ones((), device="meta").expand(count)
        peaks.append(measure_peak(lambda: torch.autograd.backward(out, grad), device="meta").peak_bytes)
    assert peaks[1] - peaks[0] == (3000 - 500) * 3 * 4


@requires_extension
def test_meta_predicts_cpu():
    reports = {}
    for device in ("cpu", "meta"):
        model = fused_model(device)
        latent = torch.zeros(5, device=device, requires_grad=True)
        reports[device] = measure_peak(lambda: model((10, 11, 12), 0.5, latent), backward=True, device=device)
    assert reports["cpu"].peak_bytes == reports["meta"].peak_bytes
    assert reports["cpu"].end_bytes == reports["meta"].end_bytes


# --- kernels and validation ------------------------------------------------------------------------

SENTINEL = 12345.0


@requires_extension
def test_cpu_kernels_stay_inside_their_buffers():
    from brainkernels.ops.coordinate_mlp.api import _pack
    from brainkernels.ops.coordinate_mlp.cpu import _network_tuple, _voxels_tuple
    from brainkernels.ops.coordinate_mlp.op import _spec

    kernels = _extension.load()
    for activation, code in (("wire", 0), ("siren", 1), ("relu", 2)):  # one layout on both sides
        assert kernels.coordinate_mlp_packed_size(3, 20, 5, code) == packed_size(3, 20, 5, activation)
    model, latent = network(3, "wire", width=20, depth=3, dtype=torch.float32)
    weights, biases = model.weights_and_biases()
    packed = _pack(0.3, latent, weights, biases, 3, 2).detach()
    coords = torch.rand(45, 3) - 0.5
    spec = _spec([], 3, 20, 3, "wire", 3.0, 2.0, True, 16, torch.float32, True)
    network_args, voxels = _network_tuple(spec), _voxels_tuple(spec, coords, 16)
    margin, size = 64, packed.shape[0]
    out = torch.full((45 + 2 * margin,), SENTINEL)
    scratch = torch.full((3 * kernels.coordinate_mlp_scratch_elements(network_args, voxels, True) + margin,), SENTINEL)
    kernels.coordinate_mlp_forward_cpu(network_args, packed.data_ptr(), voxels, out[margin:].data_ptr(),
                                       scratch.data_ptr(), 2)
    assert (out[:margin] == SENTINEL).all() and (out[-margin:] == SENTINEL).all()
    grads = torch.full((3 * size + 2 * margin,), SENTINEL)
    grad_coords = torch.full((45 * 3 + 2 * margin,), SENTINEL)
    grad_out = torch.randn(45)
    kernels.coordinate_mlp_backward_cpu(
        network_args, packed.data_ptr(), voxels, True, grad_out.data_ptr(), [0, 0, 1],
        grads[margin:].data_ptr(), grads[margin + size:].data_ptr(), 3, grad_coords[margin:].data_ptr(),
        scratch.data_ptr(),
    )
    assert (grads[:margin] == SENTINEL).all() and (grads[-margin:] == SENTINEL).all()
    assert (grad_coords[:margin] == SENTINEL).all() and (grad_coords[-margin:] == SENTINEL).all()
    assert (scratch[-margin:] == SENTINEL).all()


def bad_input_arguments():
    model, latent = network(3, "wire", width=9, depth=3, latent_size=4, dtype=torch.float32)
    weights, biases = model.weights_and_biases()
    return dict(coords_or_grid_shape=(4, 5, 6), age=0.5, latent=latent, weights=list(weights), biases=list(biases))


def _replace(items, index, value):
    items = list(items)
    items[index] = value
    return items


BAD_INPUTS = [
    ("grid rank", lambda a: dict(coords_or_grid_shape=(4, 5, 6, 7)), ValueError, "grid_shape must have 2 or 3"),
    ("grid zero", lambda a: dict(coords_or_grid_shape=(4, 0, 6)), ValueError, "grid_shape must hold positive ints"),
    ("grid float", lambda a: dict(coords_or_grid_shape=(4, 5.0, 6)), ValueError, "grid_shape must hold positive"),
    ("grid type", lambda a: dict(coords_or_grid_shape="456"), TypeError, "coords_or_grid_shape must be"),
    ("coords dims", lambda a: dict(coords_or_grid_shape=torch.zeros(5, 4)), ValueError, "dims 2 or 3"),
    ("coords dtype", lambda a: dict(coords_or_grid_shape=torch.zeros(5, 3, dtype=torch.float64)), TypeError,
     "coords are torch.float64"),
    ("coords device", lambda a: dict(coords_or_grid_shape=torch.zeros(5, 3, device="meta")), ValueError,
     "coords are on meta"),
    ("dims vs weights", lambda a: dict(coords_or_grid_shape=(4, 5)), ValueError, r"latent must have shape \(5,\)"),
    ("latent size", lambda a: dict(latent=torch.zeros(7)), ValueError, r"latent must have shape \(4,\)"),
    ("latent type", lambda a: dict(latent=[0.0] * 4), TypeError, "latent must be a torch.Tensor"),
    ("latent dtype", lambda a: dict(latent=torch.zeros(4, dtype=torch.float64)), TypeError, "latent is torch.float64"),
    ("latent device", lambda a: dict(latent=torch.zeros(4, device="meta")), ValueError, "latent is on meta"),
    ("age shape", lambda a: dict(age=torch.zeros(2)), ValueError, "age must be a scalar"),
    ("age int tensor", lambda a: dict(age=torch.tensor(1)), TypeError, "age must be a floating-point"),
    ("age type", lambda a: dict(age="0.5"), TypeError, "age must be a float or a scalar tensor"),
    ("age bool", lambda a: dict(age=True), TypeError, "age must be a float"),
    ("age nan", lambda a: dict(age=float("nan")), ValueError, "age must be finite"),
    ("age nan tensor", lambda a: dict(age=torch.tensor(float("inf"))), ValueError, "age is NaN or infinite"),
    ("age device", lambda a: dict(age=torch.tensor(0.5, device="meta")), ValueError, "age is on meta"),
    ("weights type", lambda a: dict(weights=torch.zeros(3)), TypeError, "weights must be a sequence of tensors"),
    ("weights count", lambda a: dict(weights=a["weights"][:-1]), ValueError, "one entry per linear map"),
    ("maps", lambda a: dict(weights=a["weights"][:2], biases=a["biases"][:2]), ValueError, "at least 2 layers"),
    ("weight shape", lambda a: dict(weights=_replace(a["weights"], 2, torch.zeros(9, 7))), ValueError,
     r"weights\[2\] \(layer 1\) must have shape \(9, 9\)"),
    ("bias shape", lambda a: dict(biases=_replace(a["biases"], 5, torch.zeros(2))), ValueError,
     r"biases\[5\] \(layer 2\) must have shape \(1,\)"),
    ("weight dtype", lambda a: dict(weights=_replace(a["weights"], 3, torch.zeros(9, 9, dtype=torch.float64))),
     TypeError, r"weights\[3\] is torch.float64"),
    ("weight device", lambda a: dict(weights=_replace(a["weights"], 3, torch.zeros(9, 9, device="meta"))),
     ValueError, r"weights\[3\] is on meta"),
    ("int weights", lambda a: dict(weights=[w.int() for w in a["weights"]]), TypeError,
     "weights must be float32, bfloat16 or float64"),
    ("activation", lambda a: dict(activation="tanh"), ValueError, "activation must be one of"),
    ("omega", lambda a: dict(omega=float("inf")), ValueError, "omega must be a finite real"),
    ("omega type", lambda a: dict(omega="10"), TypeError, "omega must be a finite real"),
    ("scale bool", lambda a: dict(scale=True), TypeError, "scale must be a finite real"),
    ("residual", lambda a: dict(residual=1), TypeError, "residual must be a bool"),
    ("block size", lambda a: dict(block_size=0), ValueError, "block_size must be None or an int"),
]


@pytest.mark.parametrize("name,override,error,message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_names_the_argument(name, override, error, message):
    arguments = bad_input_arguments()
    arguments.update(override(arguments))
    with pytest.raises(error, match=message):
        coordinate_mlp(**arguments)


def test_bad_module_configuration_names_the_argument():
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        CoordinateMLP(dims=4)
    with pytest.raises(ValueError, match="width must be an int >= 2"):
        CoordinateMLP(width=1)
    with pytest.raises(ValueError, match="depth must be an int >= 2"):
        ReferenceCoordinateMLP(depth=1)
    with pytest.raises(ValueError, match="activation must be one of"):
        CoordinateMLP(activation="gelu")
    # The same checks as the op's, with the same exception types.
    with pytest.raises(ValueError, match="omega must be a finite real"):
        CoordinateMLP(omega=float("nan"))
    with pytest.raises(TypeError, match="scale must be a finite real"):
        ReferenceCoordinateMLP(scale="10")
    with pytest.raises(ValueError, match="first layer residual"):
        CoordinateMLP(dims=3, latent_size=124, width=128)
    CoordinateMLP(dims=3, latent_size=124, width=128, residual=False, device="meta")

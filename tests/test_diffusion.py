"""The shared diffusion layer: the U-Net in 2D (the fused and plain paths agree, shapes are
checked), its encoder half, and guided ancestral sampling (the guidance moves samples the way the
gradient points; without it, sampling is the plain DDPM posterior)."""

import pytest
import torch

from brainkernels.diffusion.process import Diffusion
from brainkernels.diffusion.unet import DiffusionEncoder, DiffusionUNet
from brainkernels.errors import BrainkernelsError


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised output layers would make every comparison trivial."""
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return module


@pytest.mark.parametrize("blocks", [1, 2])
def test_2d_unet_fused_and_plain_agree(blocks):
    fused = _randomised(DiffusionUNet(2, 1, 8, (1, 2), blocks, dims=2))
    plain = DiffusionUNet(2, 1, 8, (1, 2), blocks, fused=False, dims=2)
    plain.load_state_dict(fused.state_dict())
    x, t = torch.randn(3, 2, 16, 24), torch.tensor([0, 500, 999])
    out = fused(x, t)
    assert out.shape == (3, 1, 16, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out, plain(x, t), rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the inference path averages skips in place
        torch.testing.assert_close(fused(x, t), out, rtol=1e-4, atol=1e-5)


def test_2d_unet_and_encoder_refuse_wrong_shapes():
    unet = DiffusionUNet(1, 1, 4, (1, 2, 2), 1, dims=2)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) inputs with H, W multiples of 4; got shape \(1, 1, 10, 16\)"):
        unet(torch.zeros(1, 1, 10, 16), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="multiples of 4"):
        unet(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, dtype=torch.long))
    encoder = DiffusionEncoder(1, 1, 4, (1, 2, 2), 1, dims=2)
    with pytest.raises(ValueError, match=r"2D inputs .* multiple of 4; got shape \(1, 1, 6, 8\)"):
        encoder(torch.zeros(1, 1, 6, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        DiffusionUNet(1, dims=1)
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        DiffusionEncoder(1, dims=4)


def test_encoder_regresses_per_sample_and_backpropagates_to_the_input():
    encoder = _randomised(DiffusionEncoder(1, 2, 4, (1, 2), 1, dims=2))
    x = torch.randn(5, 1, 8, 8, requires_grad=True)
    out = encoder(x, torch.arange(5))
    assert out.shape == (5, 2)
    out[2, 0].backward()
    touched = x.grad.flatten(1).abs().sum(1)
    assert touched[2] > 0 and torch.all(touched[[0, 1, 3, 4]] == 0)  # no mixing across the batch


def test_the_3d_unet_is_unchanged_by_default():
    unet = DiffusionUNet(2, 1, 4, (1, 2), 1)
    assert unet.dims == 3 and isinstance(unet.input_conv, torch.nn.Conv3d)


def _mean_gradient(target: float):
    """grad log N(target; mean(x), 1): toward images whose mean is ``target``."""

    def gradient(x, t):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            value = -0.5 * (x.mean(dim=(1, 2, 3)) - target).square().sum()
            return torch.autograd.grad(value, x)[0]

    return gradient


def test_guidance_moves_samples_toward_the_target():
    diffusion = Diffusion(1000)
    x = diffusion.add_noise(torch.zeros(4, 1, 8, 8), torch.full((4,), 99), torch.randn(4, 1, 8, 8,
                            generator=torch.Generator().manual_seed(0)))
    results = {}
    for target in (-0.5, 0.5):
        for scale in (0.0, 3e3):
            out = diffusion.guided_ddpm_sample(lambda xt, t: torch.zeros_like(xt), x.clone(), 100,
                                               gradient=_mean_gradient(target), scale=scale,
                                               generator=torch.Generator().manual_seed(1))
            results[target, scale] = out.mean().item()
    assert results[0.5, 0.0] == results[-0.5, 0.0]  # scale 0: the gradient is not used
    assert results[0.5, 3e3] > results[0.5, 0.0] + 0.1
    assert results[-0.5, 3e3] < results[-0.5, 0.0] - 0.1


@pytest.mark.parametrize("stride", [1, 7, 600])
def test_unguided_sampling_of_an_exact_denoiser_returns_its_image(stride):
    """With the true noise (the x_0 of every x_t is one fixed image), the posterior chain ends at
    that image, whatever the respacing: the coefficients are the DDPM posterior's."""
    diffusion = Diffusion(1000)
    image = torch.rand(1, 1, 8, 8) * 2 - 1
    abar = diffusion.alphas_cumprod

    def exact_noise(xt, t):
        a = abar[t].float().reshape(-1, 1, 1, 1)
        return (xt - a.sqrt() * image) / (1 - a).sqrt()

    x = diffusion.add_noise(image, torch.tensor([599]), torch.randn(1, 1, 8, 8))
    out = diffusion.guided_ddpm_sample(exact_noise, x, 600, stride=stride, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, image, atol=1e-3, rtol=0)


@pytest.mark.parametrize("start", [0, 1001])
def test_guided_sampling_refuses_a_start_outside_the_schedule(start):
    with pytest.raises(BrainkernelsError, match="between 1 and the 1000 diffusion steps"):
        Diffusion(1000).guided_ddpm_sample(lambda xt, t: xt, torch.zeros(1, 1, 4, 4), start)
    with pytest.raises(BrainkernelsError, match="stride must be at least 1; got 0"):
        Diffusion(1000).guided_ddpm_sample(lambda xt, t: xt, torch.zeros(1, 1, 4, 4), 10, stride=0)


def test_respaced_guidance_still_moves_samples_toward_the_target():
    diffusion = Diffusion(1000)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    means = [diffusion.guided_ddpm_sample(lambda xt, t: torch.zeros_like(xt), x.clone(), 300, stride=10,
                                          gradient=_mean_gradient(0.5), scale=scale,
                                          generator=torch.Generator().manual_seed(1)).mean().item()
             for scale in (0.0, 3e3)]
    assert means[1] > means[0] + 0.1

"""DDM+GG, the INR paper's baseline (thesis ch. 8, section 2.3): a 2D denoising diffusion model
with gradient guidance. Two networks work in tandem on the central axial slices the 2D INR sees:

* the denoiser, the diffusion U-Net of :mod:`brainkernels.diffusion.unet` in 2D, predicts the
  noise of x_t given the input slice of the same baby (concatenated as a second channel);
* the regressor, the U-Net's encoder half, predicts the normalised age (26-45 weeks onto [0, 1])
  of a noisy slice x_t at any t.

To predict a baby's slice at another age, the input slice is noised to step L (of T = 1000) and
denoised from L to 0 by ancestral DDPM, conditioned on the input slice, each step's mean shifted
by ``c`` x its variance x grad log p(a | x_t), p a unit Gaussian around the target age ``a``
(normalised units) of the regressor's prediction: classifier guidance with a regressor. The paper
tuned L = 600 and c = 3e5.

Training items are slices of the training scans: the target, and as condition another session of
the same baby when it has one (the held-out pairs ask for another session), else the slice itself.
Both networks train in one run on the same batches (their losses add; their parameters are
disjoint, so this is two trainings in one loop) with the INR's held-out split, so ``evaluate``
scores the same pairs with the same metrics as ``inr evaluate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from brainkernels.atomic import write_csv
from brainkernels.data.cache import Entry, PreparedCache
from brainkernels.data.layouts.dhcp import DHCPScan, read_dhcp, scans_by_subject
from brainkernels.diffusion.process import Diffusion
from brainkernels.diffusion.unet import DiffusionEncoder, DiffusionUNet
from brainkernels.errors import BrainkernelsError
from brainkernels.inr.data import ModelGrid, preparation_request
from brainkernels.inr.evaluate import COPY, copy_input, pair_rows, summarise, test_pairs
from brainkernels.inr.figures import head_circumference_plot
from brainkernels.inr.infer import check_age
from brainkernels.inr.train import model_grid, split_test_subjects
from brainkernels.runtime import Trainer, TrainerConfig, config, setup, shipped, teardown
from brainkernels.runtime.claim import claimed_run
from brainkernels.runtime.prepared import cache_folder, inference_cache_folder, prepared_entries
from brainkernels.runtime.trained import load_trained_run

METHOD = "inr-ddmgg"
ARCHITECTURE_KEYS = ("channels", "channel_mult", "blocks", "regressor_channels", "regressor_channel_mult",
                     "regressor_blocks", "diffusion_steps")
RUN_FILES = ("grid.json",)
PAPER_NOISE_STEPS, PAPER_GUIDANCE_SCALE = 600, 3e5
BASELINE = "DDM+GG"  # its row in the tables


@dataclass(frozen=True)
class DDMGGConfig(TrainerConfig):
    channels: int = field(default=16, metadata={"help": "denoising U-Net base channels (also the GroupNorm groups)"})
    channel_mult: tuple[int, ...] = field(default=(1, 2, 2, 4), metadata={"help": "U-Net channel multiplier per "
                                                                          "level"})
    blocks: int = field(default=1, metadata={"help": "U-Net residual blocks per level"})
    regressor_channels: int = field(default=16, metadata={"help": "age regressor base channels"})
    regressor_channel_mult: tuple[int, ...] = field(default=(1, 2, 2, 4),
                                                    metadata={"help": "age regressor channel multiplier per level"})
    regressor_blocks: int = field(default=1, metadata={"help": "age regressor residual blocks per level"})
    diffusion_steps: int = field(default=1000, metadata={"help": "diffusion steps T"})
    flip: bool = field(default=True, metadata={"help": "mirror half of the items left-right (as the INR)"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (both networks)"})
    batch_size: int = field(default=8, metadata={"help": "slices per optimiser step"})
    steps: int = field(default=6000, metadata={"help": "optimiser steps (both networks)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the held-out test subjects (the INR's split)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("channel_mult", "regressor_channel_mult"):
            if not getattr(self, name) or any(m < 1 for m in getattr(self, name)):
                raise ValueError(f"key '{name}' must be positive ints; got {getattr(self, name)!r}")
        self.require_at_least(1, "channels", "blocks", "regressor_channels", "regressor_blocks", "diffusion_steps")
        self.require_positive("lr")


class DDMGG(nn.Module):
    """The denoiser ``(x_t, input slice) -> noise`` and the regressor ``x_t -> normalised age``;
    images (N, 1, H, W) in [-1, 1], H and W multiples of :attr:`size_multiple`."""

    def __init__(self, settings: DDMGGConfig) -> None:
        super().__init__()
        self.denoiser = DiffusionUNet(2, 1, settings.channels, settings.channel_mult, settings.blocks, dims=2)
        self.regressor = DiffusionEncoder(1, 1, settings.regressor_channels, settings.regressor_channel_mult,
                                          settings.regressor_blocks, dims=2)
        self.size_multiple = max(self.denoiser.size_multiple, self.regressor.size_multiple)

    def noise(self, x: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        return self.denoiser(torch.cat([x, condition], dim=1), t)

    def age(self, x: Tensor, t: Tensor) -> Tensor:
        """(N,) normalised ages."""
        return self.regressor(x, t)[:, 0]


def to_signal(image: Tensor, multiple: int) -> Tensor:
    """(N, 1, H', W') in [-1, 1] of [0, 1] images (N, H, W) (or one (H, W)), zero-padded (the
    background's value) at the high ends to multiples of ``multiple``."""
    image = image if image.dim() == 3 else image[None]
    pad = [(-size) % multiple for size in image.shape[1:]]
    return F.pad(image[:, None] * 2 - 1, (0, pad[1], 0, pad[0]), value=-1.0)


def from_signal(x: Tensor, shape: tuple[int, int]) -> Tensor:
    """The [0, 1] images (N, H, W) of signals (N, 1, H', W'), cropped to ``shape``."""
    return ((x[:, 0, :shape[0], :shape[1]] + 1) / 2).clamp(0, 1)


class SlicePairs(Dataset):
    """Per training scan: ``target`` and ``condition`` slices (1, H', W') as signals and the
    target's normalised ``age``. The condition is another session of the baby (drawn uniformly)
    when it has one, else the target itself; with ``flip``, half of the items are mirrored
    left-right (both slices)."""

    def __init__(self, entries: list[Entry], scans: list[DHCPScan], multiple: int, flip: bool) -> None:
        self.entries, self.scans, self.multiple, self.flip = entries, scans, multiple, flip
        by_subject: dict[str, list[int]] = {}
        for index, scan in enumerate(scans):
            by_subject.setdefault(scan.subject_id, []).append(index)
        self.others = [[other for other in by_subject[scan.subject_id] if other != index] or [index]
                       for index, scan in enumerate(scans)]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        others = self.others[index]
        other = others[int(torch.randint(len(others), ()))]
        images = torch.stack([self.entries[i].tensor("image") for i in (index, other)])
        if self.flip and bool(torch.rand(()) < 0.5):
            images = images.flip(1)  # the first axis is left-right
        target, condition = to_signal(images, self.multiple)
        return {"target": target, "condition": condition,
                "age": torch.tensor(self.scans[index].normalised_age, dtype=torch.float32)}


def training_loss(diffusion: Diffusion):
    """The denoiser's epsilon MSE plus the regressor's age MSE, both on the same x_t at uniformly
    drawn timesteps."""

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        network = getattr(model, "module", model)
        x0 = batch["target"]
        t = diffusion.sample_timesteps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        xt = diffusion.add_noise(x0, t, noise)
        denoising = F.mse_loss(network.noise(xt, t, batch["condition"]).float(), noise)
        regression = F.mse_loss(network.age(xt, t).float(), batch["age"])
        return denoising + regression

    return loss


def build_model(settings: DDMGGConfig) -> DDMGG:
    return DDMGG(settings)


def train(data: str | os.PathLike, out: str | os.PathLike, settings: DDMGGConfig, *, resume: bool = False,
          overwrite: bool = False, quiet: bool = False, cache: str | os.PathLike | None = None):
    """Train both networks on the central axial slices of the training scans of ``data`` (the
    INR's held-out subjects excluded); the run folder is ``out`` (``resume``, ``overwrite`` as
    ``inr train``), the prepared-volume cache ``cache`` (default: in the run folder; the INR's
    entries are the same, so a shared cache is read again)."""
    distributed = setup(settings.device)
    try:
        training, test = split_test_subjects(read_dhcp(data), settings.split_seed)
        if not training:
            raise BrainkernelsError(f"{data}: too few subjects: the only one, {test[0]}, is held out to test "
                                    "predicting one session from another, which leaves no scans to train on")
        grid = model_grid(training, dims=2)
        with claimed_run(out, distributed, settings, architecture_keys=ARCHITECTURE_KEYS,
                         label="a DDM+GG baseline run", resume=resume, overwrite=overwrite,
                         method_files=RUN_FILES) as run:
            if distributed.is_main:
                grid.save(run.root)
            entries = prepared_entries([preparation_request(scan, grid) for scan in training],
                                       PreparedCache(cache_folder(cache, run.root)), distributed, quiet=quiet)
            multiple = build_model(settings).size_multiple
            trainer = Trainer(
                method=METHOD, build_model=lambda: build_model(settings),
                build_optimizer=lambda parameters: torch.optim.AdamW(parameters, lr=settings.lr),
                loss_fn=training_loss(Diffusion(settings.diffusion_steps)),
                dataset=SlicePairs(entries, training, multiple, settings.flip), config=settings,
                distributed=distributed, run=run, run_config=config.to_dict(settings),
                architecture_keys=ARCHITECTURE_KEYS, quiet=quiet, memory_advice="--micro-batches or --batch-size",
            )
            trainer.fit(resume=resume)
        return run.root
    finally:
        teardown()


@dataclass(frozen=True)
class TrainedDDMGG:
    model: DDMGG
    settings: DDMGGConfig
    grid: ModelGrid


def load_trained(run_dir: str | os.PathLike, device: torch.device | str = "cpu") -> TrainedDDMGG:
    """Both networks of a baseline run folder (its latest checkpoint), frozen, in eval mode."""
    trained = load_trained_run(run_dir, DDMGGConfig, method=METHOD, architecture_keys=ARCHITECTURE_KEYS,
                               label="a DDM+GG baseline run")
    model = build_model(trained.settings)
    model.load_state_dict(trained.model_state)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return TrainedDDMGG(model.to(device).eval(), trained.settings, ModelGrid.load(trained.run.root))


def age_log_likelihood_gradient(model: DDMGG, target_age: float):
    """``gradient(x_t, t)`` = grad_x log N(target_age; regressor(x_t, t), 1), normalised ages: it
    points where the regressor's prediction moves toward ``target_age``."""

    def gradient(x: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            log_likelihood = -0.5 * (model.age(x, t) - target_age).square().sum()
            return torch.autograd.grad(log_likelihood, x)[0]

    return gradient


def predict(trained: TrainedDDMGG, image: Tensor, age_out_weeks: float, *, noise_steps: int,
            guidance_scale: float, stride: int = 1, seed: int = 0) -> Tensor:
    """The slice ``image`` ((H, W) in [0, 1], model grid) at ``age_out_weeks``: noised to step
    ``noise_steps`` (L) and denoised to 0 visiting every ``stride``-th step (1: all L, as the
    paper), conditioned on itself and guided toward the age with scale ``guidance_scale`` (c).
    Noise from a generator seeded ``seed``."""
    model = trained.model
    diffusion = Diffusion(trained.settings.diffusion_steps)
    if not 1 <= noise_steps <= diffusion.steps:
        raise BrainkernelsError(f"--noise-steps must be between 1 and the {diffusion.steps} diffusion steps the model "
                                f"was trained with; got {noise_steps}")
    if stride < 1:
        raise BrainkernelsError(f"--stride must be at least 1; got {stride}")
    if not (guidance_scale >= 0 and guidance_scale != float("inf")):
        raise BrainkernelsError(f"--guidance-scale must be a finite number, 0 or more; got {guidance_scale}")
    target_age = check_age(age_out_weeks)
    device = next(model.parameters()).device
    condition = to_signal(image.float(), model.size_multiple).to(device)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(condition.shape, generator=generator).to(device)
    x = diffusion.add_noise(condition, torch.full((1,), noise_steps - 1, device=device, dtype=torch.long), noise)
    with torch.no_grad():
        x = diffusion.guided_ddpm_sample(lambda xt, t: model.noise(xt, t, condition), x, noise_steps,
                                         gradient=age_log_likelihood_gradient(model, target_age),
                                         scale=guidance_scale, stride=stride, generator=generator)
    return from_signal(x, tuple(image.shape))[0].cpu()


def training_pairs(data: str | os.PathLike, split_seed: int) -> list[tuple[DHCPScan, DHCPScan]]:
    """(first, last) sessions of the training subjects scanned twice or more: for tuning L and c
    without looking at the held-out pairs."""
    training, _ = split_test_subjects(read_dhcp(data), split_seed)
    pairs = [(sessions[0], sessions[-1]) for sessions in scans_by_subject(training).values() if len(sessions) > 1]
    if not pairs:
        raise BrainkernelsError(f"{data}: no training subject has two sessions, so there is nothing to tune on")
    return pairs


def _rows(run_dir, data, pairs_of, cache, *, noise_steps: int, guidance_scale: float, stride: int, seed: int,
          device: str, workers: int, quiet: bool) -> list[dict]:
    distributed = setup(device)
    try:
        trained = load_trained(run_dir, distributed.device)
        pairs = pairs_of(trained.settings.split_seed)
        return pair_rows(pairs, trained.grid,
                         lambda first, last, source: predict(trained, source.image, last.age_weeks,
                                                             noise_steps=noise_steps, guidance_scale=guidance_scale,
                                                             stride=stride, seed=seed),
                         cache, distributed, description="DDM+GG evaluation", workers=workers, quiet=quiet)
    finally:
        teardown()


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None, *,
             noise_steps: int = PAPER_NOISE_STEPS, guidance_scale: float = PAPER_GUIDANCE_SCALE, stride: int = 1,
             seed: int = 0, device: str = "auto", workers: int = 0, quiet: bool = False, subjects: str = "held-out",
             min_gap: float = 0.0, cache: str | os.PathLike | None = None) -> dict[str, dict[str, float]]:
    """``inr evaluate`` for the baseline: the same pairs (held-out, or ``subjects="all"``; at least
    ``min_gap`` weeks apart), the same metrics and files (``pairs.csv``, ``summary.csv``,
    ``head_circumference.png`` in ``out``, default RUN/evaluation); the summary's rows are
    ``DDM+GG`` and the copy-input baseline."""
    out = shipped.evaluation_folder(run_dir, out)
    folder = inference_cache_folder(cache, shipped.resolve(run_dir, DDMGGConfig), out)
    rows = _rows(run_dir, data, lambda split_seed: test_pairs(data, split_seed, subjects, min_gap), folder,
                 noise_steps=noise_steps, guidance_scale=guidance_scale, stride=stride, seed=seed, device=device,
                 workers=workers, quiet=quiet)
    out.mkdir(parents=True, exist_ok=True)
    results = {BASELINE: summarise(rows), COPY: summarise(copy_input(rows))}
    write_csv(out / "pairs.csv", [{**row, "noise_steps": noise_steps, "guidance_scale": guidance_scale,
                                   "stride": stride} for row in rows])
    write_csv(out / "summary.csv", [{"variant": name, **summary} for name, summary in results.items()])
    head_circumference_plot({BASELINE: rows}, out / "head_circumference.png")
    return results


def tune(run_dir: str | os.PathLike, data: str | os.PathLike, noise_steps: list[int], guidance_scales: list[float],
         *, pairs: int = 5, stride: int = 1, seed: int = 0, device: str = "auto", quiet: bool = False,
         cache: str | os.PathLike | None = None) -> list[dict]:
    """The summary of every (L, c) on the first ``pairs`` pairs of training subjects of ``data``
    (never the held-out ones), with the copy-input baseline's PSNR and SSIM on the same pairs;
    written to RUN/tuning.csv, best PSNR first."""
    if pairs < 1:
        raise BrainkernelsError(f"--pairs must be at least 1; got {pairs}")
    root = shipped.resolve(run_dir, DDMGGConfig)
    folder = inference_cache_folder(cache, root, root / "tuning")
    results = []
    for steps in noise_steps:
        for scale in guidance_scales:
            rows = _rows(run_dir, data, lambda split_seed: training_pairs(data, split_seed)[:pairs], folder,
                         noise_steps=steps, guidance_scale=scale, stride=stride, seed=seed, device=device, workers=0,
                         quiet=quiet)
            copy = summarise(copy_input(rows))
            results.append({"noise_steps": steps, "guidance_scale": scale, "stride": stride, "pairs": len(rows),
                            **summarise(rows), "psnr_copy": copy["psnr"], "ssim_copy": copy["ssim"]})
    results.sort(key=lambda row: -row["psnr"])
    write_csv(root / "tuning.csv", results)
    return results

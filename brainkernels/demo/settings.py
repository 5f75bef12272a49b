"""What the demo runs at each level: cohort sizes and each method's settings.

Both levels evaluate the models shipped with brainkernels on held-out cohorts (their model cards
say which) and train each method from scratch. ``quick`` keeps the whole demo under 10 minutes on
a 2-core CPU: its runs from scratch are small and short, to show training at work, and are not
evaluated. ``default`` trains longer and evaluates those models too (under an hour on a CPU,
minutes on a GPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from brainkernels.inr.train import INRConfig
from brainkernels.patchddm.train import PatchDDMConfig
from brainkernels.ppr.train import PPRConfig


@dataclass(frozen=True)
class Cohort:
    subjects: int
    shape: int
    seed: int = 1
    rescanned: float | None = None


@dataclass(frozen=True)
class DemoSettings:
    level: str
    ct: Cohort
    ppr: PPRConfig
    mr: Cohort
    patchddm: PatchDDMConfig
    sampling_steps: int
    ensemble: tuple[int, ...]
    neonatal: Cohort
    inr: INRConfig
    fit_steps: int
    evaluate_trained: bool  # evaluate the models trained from scratch (the shipped ones always are)
    ages: tuple[float, ...] = (30.0, 34.0, 38.0, 42.0, 44.0)

    def on_device(self, device: str) -> DemoSettings:
        return dataclasses.replace(self, **{name: dataclasses.replace(getattr(self, name), device=device)
                                            for name in ("ppr", "patchddm", "inr")})


_LOGGING = dict(log_every=50, checkpoint_every=500)

QUICK = DemoSettings(
    level="quick",
    ct=Cohort(subjects=24, shape=64),
    ppr=PPRConfig(network_size=4, patch=19, patches_per_step=64, lr=1e-3, steps=300, **_LOGGING),
    mr=Cohort(subjects=20, shape=32, seed=2),
    patchddm=PatchDDMConfig(channels=16, channel_mult=(1, 2, 2), patch=16, lr=2e-4, batch_size=2, steps=300,
                            **_LOGGING),
    sampling_steps=10, ensemble=(1, 3, 5),
    neonatal=Cohort(subjects=30, shape=32, rescanned=0.5),
    inr=INRConfig(dims=2, width=64, depth=6, latent_size=32, steps=1000, **_LOGGING),
    fit_steps=300, evaluate_trained=False,
)

DEFAULT = DemoSettings(
    level="default",
    ct=Cohort(subjects=40, shape=96),
    ppr=PPRConfig(network_size=8, patch=19, patches_per_step=128, lr=1e-3, steps=4000, **_LOGGING),
    mr=Cohort(subjects=40, shape=32, seed=2),
    patchddm=PatchDDMConfig(channels=16, channel_mult=(1, 2, 2), patch=16, lr=2e-4, batch_size=2, steps=3000,
                            **_LOGGING),
    sampling_steps=20, ensemble=(1, 3, 5),
    neonatal=Cohort(subjects=60, shape=32, rescanned=0.5),
    inr=INRConfig(dims=2, width=64, depth=6, latent_size=32, steps=2000, **_LOGGING),
    fit_steps=1000, evaluate_trained=True,
)

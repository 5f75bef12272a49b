"""PatchDDM from Python: a synthetic BraTS-style cohort, training on coordinate-encoded patches,
an ensemble segmentation of one subject with its uncertainty, and Dice / HD95 on the test split.

    python python/examples/patchddm_segmentation.py --out patchddm_example [--steps 500]
"""

import argparse
from pathlib import Path

from brainkernels.data.layouts.brats import read_brats
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.patchddm.evaluate import evaluate, segment
from brainkernels.patchddm.train import PatchDDMConfig, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--subjects", type=int, default=20)
parser.add_argument("--shape", type=int, default=32)
parser.add_argument("--steps", type=int, default=500)
parser.add_argument("--channels", type=int, default=16)
arguments = parser.parse_args()

cohort = arguments.out / "mr"
write_cohort("brats", cohort, subjects=arguments.subjects, shape=arguments.shape, seed=2, overwrite=True)
settings = PatchDDMConfig(channels=arguments.channels, channel_mult=(1, 2, 2), patch=16, lr=2e-4, batch_size=2,
                          steps=arguments.steps, device="cpu")
run = train(cohort, arguments.out / "run", settings, quiet=True)

# Mask, mean probability and ensemble variance as NIfTI (the input's affine) plus PNGs.
subject = read_brats(cohort)[0]
masks = segment(run, subject.flair.parent, arguments.out / "segmentation", steps=10, ensemble=3, quiet=True)
print("segmentation:", masks[0])

for row in evaluate(run, cohort, steps=[10], ensemble=[1, 3], quiet=True):
    print(f"{row['ensemble']} member(s): Dice {row['dice_mean']:.3f}, HD95 {row['hd95_mean_mm']:.1f} mm")

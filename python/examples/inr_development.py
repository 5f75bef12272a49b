"""The INR from Python: a synthetic neonatal cohort, an auto-decoder with SSL and SGLA, one
held-out baby predicted at other ages, and PSNR / SSIM / head circumference on all held-out pairs.

    python python/examples/inr_development.py --out inr_example [--steps 1000]
"""

import argparse
from pathlib import Path

from brainkernels.data.synth.cohort import write_cohort
from brainkernels.inr.evaluate import evaluate, test_pairs
from brainkernels.inr.predict import predict
from brainkernels.inr.train import INRConfig, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--subjects", type=int, default=30)
parser.add_argument("--shape", type=int, default=32)
parser.add_argument("--steps", type=int, default=1000)
parser.add_argument("--fit-steps", type=int, default=300)
arguments = parser.parse_args()

cohort = arguments.out / "neonatal"
write_cohort("dhcp", cohort, subjects=arguments.subjects, shape=arguments.shape, seed=1, rescanned=0.5,
             overwrite=True)
settings = INRConfig(dims=2, width=64, depth=6, latent_size=32, ssl=True, sgla=0.1, steps=arguments.steps,
                     device="cpu")
run = train(cohort, arguments.out / "run", settings, quiet=True)

first, last = test_pairs(cohort, settings.split_seed)[0]
written = predict(run, first.t2w_path, first.age_weeks, [30, 36, last.age_weeks, 44], arguments.out / "prediction",
                  fit_steps=arguments.fit_steps, quiet=True)
print(f"{first.subject_id} scanned at {first.age_weeks:.1f} weeks, predicted at 30-44 weeks:", written[-1])

results = evaluate(run, cohort, fit_steps=arguments.fit_steps, quiet=True)  # the model and the copy-input baseline
for name, summary in results.items():
    print(f"{name}: " + ", ".join(f"{key} {value:.3f}" for key, value in summary.items()))

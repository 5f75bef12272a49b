"""PPR from Python: a synthetic head-CT cohort, training on its healthy scans, the dense anomaly
map of one scan (exactly equal to the paper's patch-by-patch evaluation), and the AUROCs.

    python python/examples/ppr_anomaly_detection.py --out ppr_example [--steps 300]
"""

import argparse
from pathlib import Path

import torch

from brainkernels.data.synth.cohort import write_cohort
from brainkernels.ppr.data import prepare
from brainkernels.ppr.evaluate import evaluate
from brainkernels.ppr.infer import anomaly_map
from brainkernels.ppr.train import PPRConfig, load_trained, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--subjects", type=int, default=24)
parser.add_argument("--shape", type=int, default=64)
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--network-size", type=int, default=4)
arguments = parser.parse_args()

cohort = arguments.out / "ct"
write_cohort("cq500", cohort, subjects=arguments.subjects, shape=arguments.shape, seed=1, overwrite=True)
settings = PPRConfig(network_size=arguments.network_size, patch=19, patches_per_step=64, lr=1e-3, steps=arguments.steps,
                     device="cpu")
run = train(cohort, arguments.out / "run", settings, quiet=True)

model, _ = load_trained(run)
scan = prepare(sorted((cohort / "scans").glob("*.nii.gz"))[0])  # equalised CT in [0, 1] and its head mask
dense = anomaly_map(model, scan.volume.data, mode="dense", tile=32)
patchwise = anomaly_map(model, scan.volume.data, mode="patchwise", chunk=4096)
print(f"{scan.name}: max position error {dense.max():.3f}; dense == patchwise: "
      f"{torch.allclose(dense, patchwise, atol=1e-5)}")

aurocs = evaluate(run, cohort, quiet=True)  # writes RUN/evaluation/{scores.csv, auroc.csv, roc.png}
for score, per_structure in aurocs.items():  # against healthy scans (brainkernels), maximum error (paper)
    print(f"AUROC, {score}:", {name: round(value, 3) for name, value in per_structure.items()})

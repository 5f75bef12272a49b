"""Demo stage: each method's memory at the paper's sizes (exact, on the meta device), ours beside
the unfused, reference and peer implementations and the paper's own figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from brainkernels.demo.report import Section
from brainkernels.demo.stages import Stages
from brainkernels.figures import plt, save_figure
from brainkernels.inr import footprint as inr_footprint
from brainkernels.memory import Footprint
from brainkernels.patchddm import footprint as patchddm_footprint
from brainkernels.ppr import footprint as ppr_footprint

GB = 1e9


def _patchddm_variants() -> tuple[str, ...]:
    monai = all(importlib.util.find_spec(name) for name in ("monai", "einops"))
    return (patchddm_footprint.OURS, patchddm_footprint.UNFUSED) + ((patchddm_footprint.MONAI,) if monai else ())


def measure(stages: Stages) -> dict[str, list[Footprint]]:
    with stages("memory table (meta device)"):
        return {"PPR": ppr_footprint.paper_scale_footprints(),
                "PatchDDM": patchddm_footprint.paper_scale_footprints(_patchddm_variants()),
                "INR": inr_footprint.paper_scale_footprints()}


def _figure(tables: dict[str, list[Footprint]]) -> plt.Figure:
    labels, ours, paper, others, drawn = [], [], [], [], []
    for method, rows in tables.items():
        for case in dict.fromkeys(row.case for row in rows):
            chosen = [row for row in rows if row.case == case]
            labels.append(f"{method}: {case}")
            ours.append(chosen[0].peak_bytes / GB)
            largest = max(chosen[1:], key=lambda row: row.peak_bytes)
            others.append(largest.peak_bytes / GB)
            drawn.append(largest.variant.split()[0])  # AE, unfused, reference, MONAI
            paper.append((chosen[0].paper_bytes or 0) / GB)  # the paper's figure for its version of our method
    figure, axis = plt.subplots(figsize=(9, 0.55 * len(labels) + 1.5))
    positions = range(len(labels))
    height = 0.27
    axis.barh([p - height for p in positions], ours, height, label="brainkernels", color="tab:green")
    # Name only the peers whose bars are drawn (MONAI's only where it is installed).
    axis.barh(list(positions), others, height, label=f"largest other ({' / '.join(dict.fromkeys(drawn))})",
              color="tab:grey")
    axis.barh([p + height for p in positions], [value or float("nan") for value in paper], height,
              label="the paper's figure for the same method", color="tab:orange")
    axis.set_yticks(list(positions), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("peak memory (GB, log scale)")
    axis.axvline(12, color="tab:red", linestyle=":", linewidth=1)
    axis.text(12, -0.8, " 12 GB GPU", color="tab:red", fontsize=8)
    axis.legend(loc="upper center", bbox_to_anchor=(0.4, -0.12), ncol=3, fontsize=8)
    figure.tight_layout()
    return figure


def section(tables: dict[str, list[Footprint]], out: Path) -> Section:
    result = Section("Memory at the papers' sizes")
    result.text("Peak bytes of one step at the sizes of the papers (256^3 volumes, 128^3 patches), measured "
                "exactly on PyTorch's meta device with brainkernels.memory (no data, no GPU needed): "
                "brainkernels beside the same network built from plain PyTorch modules, the peers and the baseline, "
                "and the figure each paper reports for its own implementation (measured on a GPU, so it also holds "
                "the CUDA context and allocator caches). PatchDDM in bfloat16, PPR and INR in float32, batch 1.")
    rows = []
    for method, footprints in tables.items():
        for row in footprints:
            ours = next(other for other in footprints if other.case == row.case)
            rows.append((method, row.case, row.variant, f"{row.peak_bytes / GB:.2f}",
                         f"{row.peak_bytes / ours.peak_bytes:.1f}x",
                         f"{row.paper_bytes / GB:.1f}" if row.paper_bytes else ""))
    result.table(("method", "workload", "implementation", "peak GB (10^9 bytes)", "vs first row", "paper GB"), rows)
    if patchddm_footprint.MONAI not in _patchddm_variants():
        result.text(f"No {patchddm_footprint.MONAI} rows: MONAI is not installed here (it is a test dependency, "
                    "not a dependency of brainkernels). `pip install monai einops` (or `pip install \".[test]\"` "
                    "in the source tree) adds them.")
    save_figure(_figure(tables), out / "memory.png")
    result.image(out / "memory.png", "Peak memory of each workload: brainkernels, the largest peer, the paper")
    result.text("The training, sampling and INR rows also come from `pytest benchmarks -k memory` (pytest-benchmark).")
    return result

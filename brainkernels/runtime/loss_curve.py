"""The training loss of a run against its steps, as ``figures/loss.png`` of the run folder, so a
user sees whether training converged without reading metrics.jsonl."""

from __future__ import annotations

from brainkernels.figures import plt, save_figure
from brainkernels.runtime.run_folder import RunFolder

FILE = "loss.png"


def loss_series(run: RunFolder) -> tuple[list[int], list[float]]:
    """(steps, losses) of the run's metrics rows that hold a training loss."""
    rows = [row for row in run.read_metrics() if "loss" in row]
    return [row["step"] for row in rows], [row["loss"] for row in rows]


def write_loss_curve(run: RunFolder, method: str) -> None:
    steps, losses = loss_series(run)
    if not steps:
        return
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(steps, losses, marker="." if len(steps) < 30 else None)
    # Losses of diffusion and regression models fall by orders of magnitude: a log scale shows the tail.
    if min(losses) > 0:
        axes.set_yscale("log")
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("training loss")
    axes.set_title(f"{method} training loss ({steps[-1]} steps)")
    axes.grid(alpha=0.3)
    save_figure(figure, run.figures / FILE)

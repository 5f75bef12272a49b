"""A toy regression trained through the real Trainer. The runtime tests start it as a script,
alone or under torchrun, and read the run folder and the final weights it writes."""

import argparse
import json
import os
import signal
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from brainkernels.runtime import Trainer, TrainerConfig, checkpoint, config, setup, teardown
from brainkernels.runtime.claim import claimed_run
from brainkernels.runtime.inference import run_cohort


class NoisyPlane(Dataset):
    """y = x . w + noise, the same samples in every process; each draw of a sample jitters its x
    with torch's generator (as a method's dataset draws patch positions)."""

    def __init__(self, count: int = 64) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.x = torch.randn(count, 4, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(count, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index] + 0.05 * torch.randn(4), self.y[index]


def build_model(dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x).squeeze(-1), y)


def kill_while_writing_checkpoint(step: int) -> None:
    """Fault injection: at checkpoint ``step``, write half of the file, then SIGKILL this process."""
    real_save = torch.save

    def save(payload, file):
        if payload.get("step") != step:
            return real_save(payload, file)
        real_save(payload, file)
        file.flush()
        with open(file.name, "r+b") as handle:
            handle.truncate(os.path.getsize(file.name) // 2)
            handle.flush()
            os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.torch.save = save


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at-checkpoint", type=int, default=None)
    # Dropout draws from each process's own RNG, so runs with it match only runs with as many processes.
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=1e-2)
    config.add_arguments(parser, TrainerConfig)
    arguments = parser.parse_args(argv)
    trainer_config = config.config_from_arguments(TrainerConfig, arguments)
    if arguments.kill_at_checkpoint is not None:
        kill_while_writing_checkpoint(arguments.kill_at_checkpoint)
    distributed = setup(trainer_config.device)
    torch.use_deterministic_algorithms(True)
    trainer = Trainer(
        method="toy", build_model=lambda: build_model(arguments.dropout),
        build_optimizer=lambda p: torch.optim.AdamW(p, lr=arguments.lr),
        loss_fn=loss_fn, dataset=NoisyPlane(), config=trainer_config, distributed=distributed,
        run_config=config.to_dict(trainer_config), quiet=True,
        evaluate=lambda model, step: {"mse": F.mse_loss(model(NoisyPlane().x).squeeze(-1), NoisyPlane().y).item()},
    )
    with claimed_run(arguments.out, distributed, trainer_config, architecture_keys=(), label="a toy run",
                     resume=arguments.resume, overwrite=False, method_files=("*.pt", "*.json")) as run:
        trainer.run = run
        model = trainer.fit(resume=arguments.resume)
    torch.save(model.state_dict(), run.root / f"weights-rank{distributed.rank}.pt")
    # Cohort inference sharded over the ranks: every rank must see all results, in order.
    cohort = [torch.full((1, 4), float(index)) for index in range(7)]
    predictions = run_cohort(cohort, lambda x: model(x).item(), distributed, description="toy inference", quiet=True)
    (run.root / f"predictions-rank{distributed.rank}.json").write_text(json.dumps(predictions))
    teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training and inference engine shared by the methods: Trainer, DDP, checkpoints, run folders,
configuration, progress."""

from brainkernels.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from brainkernels.runtime.config import ConfigError, load_config
from brainkernels.runtime.distributed import Distributed, setup, teardown
from brainkernels.runtime.run_folder import RunFolder
from brainkernels.runtime.trainer import Trainer, TrainerConfig, seed_everything

__all__ = [
    "ConfigError", "Distributed", "RunFolder", "Trainer", "TrainerConfig", "latest_checkpoint", "load_checkpoint",
    "load_config", "save_checkpoint", "seed_everything", "setup", "teardown",
]

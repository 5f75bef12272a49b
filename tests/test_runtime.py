"""The training engine on a toy regression: determinism, accumulation, AMP, DDP, checkpoints, resume."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brainkernels.errors import BrainkernelsError
from brainkernels.runtime import Distributed, RunFolder, checkpoint
from brainkernels.runtime.inference import run_cohort
from brainkernels.runtime.loss_curve import loss_series

TOY = Path(__file__).with_name("toy_training.py")
STEPS = ["--steps", "12", "--batch-size", "8", "--checkpoint-every", "4", "--log-every", "2", "--device", "cpu"]


def train(out: Path, *options: str, processes: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    launcher = [sys.executable, str(TOY)] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", str(TOY)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, "--out", str(out), *options], capture_output=True, text=True,
                            timeout=600, env=environment, cwd=out.parent)
    if check:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def weights(out: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(out / f"weights-rank{rank}.pt", weights_only=True)


def assert_same_weights(first, second, **tolerance) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], **tolerance)


def test_same_seed_same_weights_and_run_folder(tmp_path):
    train(tmp_path / "a", *STEPS, "--dropout", "0.2")
    train(tmp_path / "b", *STEPS, "--dropout", "0.2")
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"), rtol=0, atol=0)
    run = RunFolder(tmp_path / "a")
    rows = run.read_metrics()
    assert [row["step"] for row in rows if "loss" in row] == [2, 4, 6, 8, 10, 12]
    assert {"loss", "lr", "samples_per_s", "peak_bytes"} <= rows[0].keys() and rows[0]["peak_bytes"] > 0
    assert any("eval/mse" in row for row in rows)
    assert "batch_size = 8" in run.config.read_text()
    # keep_checkpoints=2: the two latest remain, and a later command can load them.
    assert sorted(path.name for path in run.checkpoints.iterdir()) == ["step-00000008.pt", "step-00000012.pt"]
    state = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(run.checkpoints), method="toy")
    assert state["step"] == 12 and state["config"]["batch_size"] == 8
    # The loss curve is drawn from exactly the logged rows.
    assert loss_series(run) == ([2, 4, 6, 8, 10, 12], [row["loss"] for row in rows if "loss" in row])
    assert (run.figures / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gradient_accumulation_gives_the_same_training(tmp_path):
    train(tmp_path / "whole", *STEPS)
    train(tmp_path / "accumulated", *STEPS, "--micro-batches", "4")
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "accumulated"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, precision):
    result = train(tmp_path / precision, *STEPS, "--precision", precision)
    # fp16 on the CPU is many times slower than fp32 (no fast float16 convolutions): the user is told.
    assert ("precision fp16 on the CPU" in result.stderr) == (precision == "fp16")
    rows = [row for row in RunFolder(tmp_path / precision).read_metrics() if "loss" in row]
    assert rows[-1]["loss"] < rows[0]["loss"]
    if precision == "fp16":  # the grad scaler's state is part of the checkpoint
        latest = checkpoint.latest_checkpoint(tmp_path / precision / "checkpoints")
        assert checkpoint.load_checkpoint(latest, method="toy")["scaler"]["scale"] > 0


def test_two_processes_match_one(tmp_path):
    train(tmp_path / "ddp", *STEPS, processes=2)
    train(tmp_path / "single", *STEPS)
    assert_same_weights(weights(tmp_path / "ddp", 0), weights(tmp_path / "ddp", 1), rtol=0, atol=0)
    assert_same_weights(weights(tmp_path / "ddp", 0), weights(tmp_path / "single"), rtol=1e-5, atol=1e-6)
    assert len([row for row in RunFolder(tmp_path / "ddp").read_metrics() if "loss" in row]) == 6  # rank 0 only
    sharded = [json.loads((tmp_path / "ddp" / f"predictions-rank{rank}.json").read_text()) for rank in (0, 1)]
    single = json.loads((tmp_path / "single" / "predictions-rank0.json").read_text())
    assert len(single) == 7 and sharded[0] == sharded[1]
    torch.testing.assert_close(torch.tensor(sharded[0]), torch.tensor(single), rtol=1e-5, atol=1e-6)


def test_loading_workers_do_not_change_the_training(tmp_path):
    train(tmp_path / "in-process", *STEPS, "--dropout", "0.2", "--workers", "0")
    train(tmp_path / "workers", *STEPS, "--dropout", "0.2", "--workers", "3")
    assert_same_weights(weights(tmp_path / "in-process"), weights(tmp_path / "workers"), rtol=0, atol=0)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_after_sigkill_while_writing_a_checkpoint(tmp_path, workers):
    train(tmp_path / "reference", *STEPS, "--dropout", "0.2", "--workers", workers)
    killed = train(tmp_path / "killed", *STEPS, "--dropout", "0.2", "--workers", workers, "--kill-at-checkpoint", "8",
                   check=False)
    assert killed.returncode == -signal.SIGKILL
    folder = tmp_path / "killed" / "checkpoints"
    assert checkpoint.latest_checkpoint(folder).name == "step-00000004.pt"
    assert list(folder.glob(".step-00000008.pt.*")), "the half-written checkpoint should be left as a temporary"
    train(tmp_path / "killed", *STEPS, "--dropout", "0.2", "--workers", workers, "--resume")
    assert_same_weights(weights(tmp_path / "reference"), weights(tmp_path / "killed"), rtol=0, atol=0)
    assert not list(folder.glob(".step-*"))
    steps = [row["step"] for row in RunFolder(tmp_path / "killed").read_metrics() if "loss" in row]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_resume_of_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tmp_path):
    killed = train(tmp_path / "run", *STEPS, "--kill-at-checkpoint", "4", check=False)
    assert killed.returncode == -signal.SIGKILL
    train(tmp_path / "run", *STEPS, "--resume")
    assert [row["step"] for row in RunFolder(tmp_path / "run").read_metrics() if "loss" in row] == [2, 4, 6, 8, 10, 12]


def test_a_refused_run_folder_stops_every_rank(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    result = train(tmp_path / "run", *STEPS, processes=2, check=False)  # rank 1 used to wait for rank 0 forever
    assert result.returncode != 0 and "the folder is not empty" in result.stderr
    assert [path.name for path in (tmp_path / "run").iterdir()] == ["notes.txt"]


def test_resume_takes_the_learning_rate_given_now(tmp_path):
    train(tmp_path / "run", *STEPS, "--steps", "8")
    train(tmp_path / "run", *STEPS, "--resume", "--lr", "1e-3")
    rates = {row["step"]: row["lr"] for row in RunFolder(tmp_path / "run").read_metrics() if "loss" in row}
    assert rates == {2: 1e-2, 4: 1e-2, 6: 1e-2, 8: 1e-2, 10: 1e-3, 12: 1e-3}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("first", ["cpu", "cuda"])
def test_resume_on_a_gpu(tmp_path, first):
    train(tmp_path / "run", *STEPS, "--steps", "8", "--device", first)
    train(tmp_path / "run", *STEPS, "--device", "cuda", "--resume")
    steps = [row["step"] for row in RunFolder(tmp_path / "run").read_metrics() if "loss" in row]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_checkpoints_from_elsewhere_are_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    path = checkpoint.save_checkpoint(tmp_path / "step-00000001.pt", method="ppr", config={"m": 16}, step=1,
                                      model=model, optimizer=optimizer, scaler=None)
    with pytest.raises(BrainkernelsError, match="checkpoint of method 'ppr' cannot be used for 'inr'"):
        checkpoint.load_checkpoint(path, method="inr")
    with pytest.raises(BrainkernelsError, match="incompatible configuration: m=16 in the checkpoint but 32 now"):
        checkpoint.load_checkpoint(path, method="ppr", config={"m": 32}, architecture_keys=("m",))
    assert checkpoint.load_checkpoint(path, method="ppr", config={"m": 16}, architecture_keys=("m",))["step"] == 1

    class Payload:  # anything but plain data must not be unpickled
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    torch.save({"format": checkpoint.FORMAT, "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(BrainkernelsError, match="not a loadable brainkernels checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "evil.pt", method="ppr")
    (tmp_path / "broken.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(BrainkernelsError, match="broken.pt: not a loadable"):
        checkpoint.load_checkpoint(tmp_path / "broken.pt", method="ppr")


def test_batch_size_must_split_over_processes_and_micro_batches(tmp_path):
    result = train(tmp_path / "bad", *STEPS, "--micro-batches", "3", check=False)
    assert result.returncode != 0 and "batch_size 8 must be a multiple of processes x micro_batches" in result.stderr


def test_out_of_memory_says_what_was_running_and_what_to_lower():
    def infer(item):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    alone = Distributed(rank=0, world_size=1, device=torch.device("cpu"))
    with pytest.raises(BrainkernelsError, match=r"out of GPU memory during dense inference of scan-3 "
                                                r"\(tile=128\).*lower --tile.*Tried to allocate 2.00 GiB"):
        run_cohort(["scan-3"], infer, alone, description="dense inference", sizes="tile=128", advice="lower --tile",
                   quiet=True)


def _square_or_refuse(item: int) -> torch.Tensor:
    if item == 3:
        raise BrainkernelsError("scan-3: not a readable NIfTI file")
    return torch.tensor(float(item * item))


@pytest.mark.parametrize("workers", [0, 2])
def test_cohort_inputs_load_in_workers_in_order_and_errors_stay_one_line(workers):
    alone = Distributed(rank=0, world_size=1, device=torch.device("cpu"))
    results = run_cohort([0, 1, 2], lambda loaded: loaded.item() + 1, alone, description="toy", load=_square_or_refuse,
                         workers=workers, quiet=True)
    assert results == [1.0, 2.0, 5.0]
    with pytest.raises(BrainkernelsError) as raised:
        run_cohort([1, 2, 3, 4], lambda loaded: loaded, alone, description="toy", load=_square_or_refuse,
                   workers=workers, quiet=True)
    assert str(raised.value) == "scan-3: not a readable NIfTI file"


FULL_TEMPORARY_FOLDER = """
import errno, os, sys, tempfile
real_mkdtemp = tempfile.mkdtemp

def full(*args, dir=None, **kwargs):  # the system temporary folder is full; other folders are not
    if dir is None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_mkdtemp(*args, dir=dir, **kwargs)

tempfile.mkdtemp = full
sys.path.insert(0, {tests!r})
from brainkernels.runtime import Distributed
from brainkernels.runtime.inference import run_cohort
import toy_training
what = sys.argv[1]
try:
    if what == "training":
        toy_training.main(["--out", "run", "--steps", "2", "--batch-size", "8", "--device", "cpu", "--workers", "2"])
    else:
        run_cohort([1, 2, 3], float, Distributed(0, 1, None), description="toy", load=toy_training.torch.ones,
                   workers=2, quiet=True)
except Exception as error:
    print(f"{{type(error).__name__}}: {{error}}")
"""


@pytest.mark.parametrize("what", ["training", "inference"])
def test_loader_workers_without_a_temporary_folder_stop_with_an_error(tmp_path, what):
    # Formerly the workers' samples were lost in their queue threads and the command waited forever.
    script = FULL_TEMPORARY_FOLDER.format(tests=str(TOY.parent))
    result = subprocess.run([sys.executable, "-c", script, what], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.stdout.startswith("BrainkernelsError: the loader workers cannot make their temporary folder "
                                    "([Errno 28] No space left on device)"), result.stdout + result.stderr[-2000:]
    assert "--workers 0" in result.stdout

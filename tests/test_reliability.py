"""Issue 15: a run folder never loses a run, and no input or fault ends in a traceback.

Read-only and full disks are simulated by injecting the OSError a real one raises (EROFS,
ENOSPC) where files are created or written; the commands run in this process (same parser, same
error handling as the installed command) so that the injection reaches them.
"""

import contextlib
import errno
import gzip
import io
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch

from brainkernels.cli import main
from brainkernels.data.layouts.brats import read_brats
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.data.volume import MAX_VOXELS_VARIABLE, load_nifti, save_nifti
from brainkernels.errors import BrainkernelsError
from brainkernels.patchddm.train import split_subjects
from brainkernels.ppr import healthy_reference
from brainkernels.runtime import RunFolder, checkpoint

PPR_OPTIONS = ("--network-size", "2", "--patch", "19", "--patches-per-step", "8", "--steps", "2",
               "--checkpoint-every", "1", "--device", "cpu", "--quiet")


def brainkernels(*argv):
    """Exit status, stdout and stderr of the command line, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(arg) for arg in argv])
        except SystemExit as exit:  # argparse refusing an option
            status = exit.code
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())


def refused(result, message):
    """The command failed with one line that holds ``message``, and no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def snapshot(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def cq500(tmp_path_factory):
    root = tmp_path_factory.mktemp("cq500") / "cohort"
    write_cohort("cq500", root, subjects=8, shape=24, seed=1)
    return root


@pytest.fixture(scope="module")
def ppr_run(cq500, tmp_path_factory):
    run = tmp_path_factory.mktemp("ppr") / "run"
    result = brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS)
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats") / "cohort"
    write_cohort("brats", root, subjects=10, shape=16, seed=4)
    return root


PATCHDDM_OPTIONS = ("--channels", "4", "--channel-mult", "1,2", "--patch", "8", "--steps", "1", "--device", "cpu",
                    "--quiet")


@pytest.fixture(scope="module")
def patchddm_run(brats, tmp_path_factory):
    run = tmp_path_factory.mktemp("patchddm") / "run"
    assert brainkernels("patchddm", "train", "--data", brats, "--out", run, *PATCHDDM_OPTIONS).returncode == 0
    return run


@pytest.fixture(scope="module")
def dhcp(tmp_path_factory):
    root = tmp_path_factory.mktemp("dhcp") / "cohort"
    write_cohort("dhcp", root, subjects=4, shape=16, seed=2, rescanned=0.8)
    return root


@pytest.fixture(scope="module")
def inr_run(dhcp, tmp_path_factory):
    run = tmp_path_factory.mktemp("inr") / "run"
    result = brainkernels("inr", "train", "--data", dhcp, "--out", run, "--dims", "2", "--width", "16", "--depth", "3",
                          "--latent-size", "8", "--batch-size", "2", "--steps", "2", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture
def scan(cq500):
    return sorted((cq500 / "scans").iterdir())[0]


# 1. A folder that holds a run is refused unless --resume or --overwrite.

def test_training_into_a_run_folder_needs_resume_or_overwrite(cq500, tmp_path):
    run = tmp_path / "run"
    assert brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS).returncode == 0
    before = snapshot(run)
    refused(brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS, "--network-size", "4"),
            "the folder is not empty")
    refused(brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS, "--network-size", "4",
                         "--resume"), "cannot resume: network_size=2 in the run but 4 now")
    assert snapshot(run) == before
    # --overwrite replaces the run: its old checkpoints do not mix with the new ones.
    result = brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS, "--network-size", "4",
                          "--steps", "1", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["step-00000001.pt"]
    assert "network_size = 4" in (run / "config.toml").read_text()
    assert [row["step"] for row in RunFolder(run).read_metrics() if "loss" in row] == [1]


def test_a_run_of_another_method_is_not_resumed(cq500, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('mode = "patch"\nchannels = 4\n')
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    refused(brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS, "--resume"),
            "cannot resume: not a PPR run")
    assert sorted(path.name for path in run.iterdir()) == ["config.toml", "metrics.jsonl"]


def test_overwrite_removes_only_what_a_run_writes(cq500, tmp_path):
    run = tmp_path / "run"
    assert brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS).returncode == 0
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    refused(brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS, "--overwrite"),
            f"holds files a run does not write (e.g. {run / 'notes.txt'})")
    assert snapshot(run) == before
    refused(brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS, "--overwrite", "--resume"),
            "--resume and --overwrite exclude each other")


def test_overwrite_patterns_match_whole_names(tmp_path):
    run = RunFolder(tmp_path / "run")
    (run.checkpoints / "keep").mkdir(parents=True)
    (run.checkpoints / "keep" / "step-1.pt").write_text("not at the checkpoints' level")
    with pytest.raises(BrainkernelsError, match="keep/step-1.pt"), run.claimed(resume=False, overwrite=True):
        pass
    assert (run.checkpoints / "keep" / "step-1.pt").is_file()


# 2. One run at a time; a killed run's lock does not block --resume.

def test_a_second_run_is_kept_out_while_the_first_holds_the_folder(cq500, tmp_path):
    run = tmp_path / "run"
    assert brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS).returncode == 0
    before = snapshot(run)
    with RunFolder(run).claimed(resume=True, overwrite=False):
        refused(brainkernels("ppr", "train", "--data", cq500, "--out", run, *PPR_OPTIONS, "--steps", "3", "--resume"),
                "another run is writing into this folder")
    assert snapshot(run) == before


def test_the_lock_of_a_killed_run_does_not_block_resume(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    run.config.write_text("steps = 1\n")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom brainkernels.runtime import RunFolder\n"
        f"with RunFolder({str(run.root)!r}).claimed(resume=True, overwrite=False):\n"
        "    print('held', flush=True)\n    time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BrainkernelsError, match="another run"), run.claimed(resume=True, overwrite=False):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run.claimed(resume=True, overwrite=False):
        assert run.config.read_text() == "steps = 1\n"


# 3, 4. Every option is checked before anything is written; counts have lower bounds.

@pytest.mark.parametrize("option, value, message", [
    ("--lr", "nan", "key 'lr' must be a finite number above 0; got nan"),
    ("--lr", "-1", "key 'lr' must be a finite number above 0; got -1.0"),
    ("--network-size", "0", "key 'network_size' must be at least 1; got 0"),
    ("--patch", "11", "key 'patch' must be between 19 and 63 voxels; got 11"),
    ("--patches-per-step", "0", "key 'patches_per_step' must be at least 1; got 0"),
    ("--micro-batches", "3", "batch_size 1 must be a multiple of processes x micro_batches"),
])
def test_bad_options_are_refused_before_the_run_folder_is_made(cq500, tmp_path, option, value, message):
    refused(brainkernels("ppr", "train", "--data", cq500, "--out", tmp_path / "run", *PPR_OPTIONS, option, value),
            message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command, option, value", [
    ("patchddm", "--lr", "inf"), ("patchddm", "--lr", "0"), ("inr", "--max-norm", "nan"), ("inr", "--width", "0"),
    ("inr", "--depth", "0"),
])
def test_other_methods_check_their_settings(tmp_path, command, option, value):
    refused(brainkernels(command, "train", "--data", tmp_path, "--out", tmp_path / "run", option, value),
            f"key '{option[2:].replace('-', '_')}' must be")


# 5. Inference outputs are not silently replaced.

@pytest.mark.parametrize("command", [
    ("ppr", "detect", "--model", "{run}", "--input", "{scan}"),
    ("patchddm", "segment", "--model", "{run}", "--input", "{scan}"),
    ("inr", "predict", "--model", "{run}", "--input", "{scan}", "--age-in", "40", "--ages", "30,35"),
    ("inr", "atlas", "--model", "{run}"),
])
def test_inference_into_a_folder_with_files_needs_overwrite(ppr_run, scan, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.nii.gz").write_text("an earlier output")
    argv = [part.format(run=ppr_run, scan=scan) for part in command]
    refused(brainkernels(*argv, "--out", out), f"--out {out}: the folder is not empty")
    assert (out / "earlier.nii.gz").read_text() == "an earlier output"


def test_detect_with_overwrite_replaces_its_outputs_and_keeps_others(ppr_run, scan, tmp_path):
    out = tmp_path / "maps"
    assert brainkernels("ppr", "detect", "--model", ppr_run, "--input", scan, "--out", out, "--quiet").returncode == 0
    (out / "notes.txt").write_text("mine")
    result = brainkernels("ppr", "detect", "--model", ppr_run, "--input", scan, "--out", out, "--quiet", "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.glob("*_anomaly.nii.gz"))) == 1


def test_predict_into_an_existing_file_needs_overwrite(tmp_path, scan):
    out = tmp_path / "older.nii.gz"
    out.write_text("an earlier prediction")
    refused(brainkernels("inr", "predict", "--model", tmp_path, "--input", scan, "--age-in", "40", "--age-out", "44",
                         "--out", out), f"{out}: exists; pass --overwrite to replace it")


# 6. Header dimensions are checked against the file before anything is allocated.

def forged(path, shape, dtype=np.int16):
    """A NIfTI of a few hundred bytes whose header declares ``shape``."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    content = header.binaryblock + b"\0" * 4 + b"\0" * 256
    path.write_bytes(gzip.compress(content) if path.name.endswith(".gz") else content)
    return path


@pytest.mark.parametrize("name, shape, message", [
    ("big.nii", (600, 600, 600), "432,000,000 bytes of voxels but the file has 608 bytes"),
    ("big.nii.gz", (600, 600, 600), "more than a gzip file of"),
    ("huge.nii.gz", (32767, 32767, 32767), "more than the limit of 1,073,741,824"),
])
def test_a_forged_header_is_refused_without_allocating(tmp_path, name, shape, message):
    path = forged(tmp_path / name, shape)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message) as error:
            load_nifti(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value).startswith(str(path)) and peak < 10 * 2**20


def test_the_voxel_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "scan.nii.gz"
    save_nifti(load_nifti(forged(tmp_path / "small.nii", (4, 4, 4))), path)
    monkeypatch.setenv(MAX_VOXELS_VARIABLE, "63")
    with pytest.raises(ValueError, match="4 x 4 x 4 = 64 voxels, more than the limit of 63"):
        load_nifti(path)
    monkeypatch.setenv(MAX_VOXELS_VARIABLE, "64")
    assert load_nifti(path).shape == (4, 4, 4)


def test_commands_name_a_forged_scan(ppr_run, tmp_path):
    path = forged(tmp_path / "forged.nii.gz", (32767, 32767, 32767))
    refused(brainkernels("ppr", "detect", "--model", ppr_run, "--input", path, "--out", tmp_path / "maps"), str(path))
    result = brainkernels("preprocess", "--pipeline", "ct", "--in", tmp_path, "--out", tmp_path.parent / "pre")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "more than the limit" in result.stderr


@pytest.mark.parametrize("argv", [("synth", "cq500", "--shape", "100000"),
                                  ("preprocess", "--pipeline", "ct", "--shape", "100000")])
def test_huge_shapes_are_refused(cq500, tmp_path, argv):
    inputs = ("--in", cq500 / "scans") if argv[0] == "preprocess" else ()
    refused(brainkernels(*argv, *inputs, "--out", tmp_path / "out"), "100000 x 100000 x 100000")
    assert not (tmp_path / "out").exists()


# 7, 8. Read-only and full disks: one line, and nothing half-written.

@pytest.fixture
def disk_refuses(monkeypatch):
    """``disk_refuses(errno)``: from now on, creating a file or folder fails as on that disk."""

    def refuse(code):
        def fail(*args, dir=None, **kwargs):
            raise OSError(code, os.strerror(code), dir)

        monkeypatch.setattr(tempfile, "mkstemp", fail)
        monkeypatch.setattr(tempfile, "mkdtemp", fail)

    return refuse


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_outputs_on_a_disk_that_refuses_them(ppr_run, patchddm_run, inr_run, brats, dhcp, cq500, scan, tmp_path,
                                             disk_refuses, code):
    subject = sorted(path for path in brats.iterdir() if path.is_dir())[0]
    t2w = sorted(dhcp.glob("sub-*/ses-*/anat/*_T2w.nii.gz"))[0]
    # Loading stays in this process (--workers 0): the injected fault breaks every temporary file,
    # the worker processes' own included, where a real read-only output disk would not.
    commands = [
        ("patchddm", "segment", "--model", patchddm_run, "--input", subject, "--steps", "2", "--ensemble", "1",
         "--device", "cpu", "--quiet", "--workers", "0", "--out", tmp_path / "segment"),
        ("inr", "predict", "--model", inr_run, "--input", t2w, "--age-in", "40", "--ages", "30,35", "--fit-steps", "2",
         "--device", "cpu", "--quiet", "--out", tmp_path / "predict"),
        ("inr", "atlas", "--model", inr_run, "--ages", "30,40", "--device", "cpu", "--out", tmp_path / "atlas"),
        ("synth", "cq500", "--subjects", "2", "--shape", "16", "--quiet", "--out", tmp_path / "synth"),
        ("ppr", "detect", "--model", ppr_run, "--input", scan, "--quiet", "--workers", "0", "--out", tmp_path / "maps"),
        ("ppr", "evaluate", "--model", ppr_run, "--data", cq500, "--quiet", "--workers", "0",
         "--out", tmp_path / "evaluation"),
        ("ppr", "train", "--data", cq500, "--out", tmp_path / "run", *PPR_OPTIONS, "--workers", "0"),
        ("preprocess", "--pipeline", "ct", "--in", cq500 / "scans", "--shape", "16", "--quiet",
         "--out", tmp_path / "pre"),
    ]
    disk_refuses(code)
    for argv in commands:
        result = brainkernels(*argv)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert os.strerror(code) in result.stderr.strip().splitlines()[-1], result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "synth").exists()
    with pytest.raises(OSError):
        main(["--debug", *map(str, commands[3])])


def test_a_full_disk_while_writing_a_checkpoint(tmp_path, monkeypatch):
    real_open = pathlib.Path.open

    def open_on_a_full_disk(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        if "w" in mode and self.name.startswith(".step-"):
            def write(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            handle.write = write
        return handle

    monkeypatch.setattr(pathlib.Path, "open", open_on_a_full_disk)
    model = torch.nn.Linear(2, 2)
    target = tmp_path / checkpoint.checkpoint_name(1)
    with pytest.raises(OSError) as error:
        checkpoint.save_checkpoint(target, method="toy", config={}, step=1, model=model,
                                   optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scaler=None)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_synth_stopped_by_a_full_disk_leaves_no_partial_cohort(tmp_path, monkeypatch):
    real_save, calls = nib.save, []

    def save_until_full(image, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(image, path)

    monkeypatch.setattr(nib, "save", save_until_full)
    refused(brainkernels("synth", "cq500", "--subjects", "3", "--shape", "16", "--quiet", "--out", tmp_path / "new"),
            "No space left on device")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    calls.clear()
    refused(brainkernels("synth", "cq500", "--subjects", "3", "--shape", "16", "--quiet", "--overwrite",
                         "--out", tmp_path / "mine"), "No space left on device")
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("content, message", [
    (None, "not valid TOML"), ("folder", "cannot read the config file (Is a directory)"),
])
def test_config_files_that_cannot_be_read(cq500, tmp_path, content, message):
    path = tmp_path / "settings.toml"
    if content == "folder":
        path.mkdir()
    else:
        path.write_bytes(bytes(range(256)))
    refused(brainkernels("ppr", "train", "--data", cq500, "--out", tmp_path / "run", "--config", path),
            f"{path}: {message}")


def test_data_that_is_a_file(tmp_path):
    (tmp_path / "reads.csv").write_text("name\n")
    for method in ("ppr", "patchddm", "inr"):
        refused(brainkernels(method, "train", "--data", tmp_path / "reads.csv", "--out", tmp_path / "run"),
                f"{tmp_path / 'reads.csv'}: not a folder")


class Unsafe:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("damage", ["pickle", "truncated", "keys"])
def test_a_bad_healthy_reference_is_named(ppr_run, scan, tmp_path, damage):
    run = shutil.copytree(ppr_run, tmp_path / "run")
    reference = run / healthy_reference.FILE
    if damage == "pickle":
        torch.save({"checkpoint": Unsafe()}, reference)
    elif damage == "truncated":
        reference.write_bytes(reference.read_bytes()[:1000])
    else:
        torch.save({"checkpoint": "step-00000002.pt", "mean": {}, "extra": 1}, reference)
    result = brainkernels("ppr", "detect", "--model", run, "--input", scan, "--out", tmp_path / "maps")
    refused(result, f"{reference}: not a healthy reference written by brainkernels")
    assert "weights_only" not in result.stderr and "this ran" not in result.stdout


def test_an_unsafe_checkpoint_is_refused_without_pytorchs_advice(ppr_run, scan, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_bytes((ppr_run / "config.toml").read_bytes())
    (run / "checkpoints").mkdir()
    torch.save({"format": Unsafe()}, run / "checkpoints" / checkpoint.checkpoint_name(1))
    result = brainkernels("ppr", "detect", "--model", run, "--input", scan, "--out", tmp_path / "maps")
    refused(result, "holds Python objects other than tensors and plain values")
    assert "weights_only" not in result.stderr


# 9. Every training subject is checked before the first step.

def test_a_bad_brats_subject_is_refused_before_training(brats, tmp_path):
    cohort = shutil.copytree(brats, tmp_path / "cohort")
    training, _, _ = split_subjects(read_brats(cohort), 0)
    last = training[-1]
    seg = load_nifti(last.seg)
    seg.data[0, 0, 0, 0] = 3
    save_nifti(seg, last.seg, dtype=np.uint8)
    refused(brainkernels("patchddm", "train", "--data", cohort, "--out", tmp_path / "run", *PATCHDDM_OPTIONS),
            f"{last.seg}: unexpected label values 3")
    assert not (tmp_path / "run").exists()
    save_nifti(load_nifti(brats / last.seg.relative_to(cohort)), last.seg, dtype=np.uint8)
    flair = load_nifti(last.flair)
    shifted = flair.affine.copy()
    shifted[0, 3] += 5
    save_nifti(flair.with_data(flair.data, shifted), last.flair)
    refused(brainkernels("patchddm", "train", "--data", cohort, "--out", tmp_path / "run", *PATCHDDM_OPTIONS),
            f"{last.flair}: affine differs")


# 10. Blank inputs warn.

def test_preprocess_warns_about_a_blank_scan(tmp_path, scan):
    (tmp_path / "in").mkdir()
    volume = load_nifti(scan)
    save_nifti(volume.with_data(torch.zeros_like(volume.data)), tmp_path / "in" / "blank.nii.gz")
    result = brainkernels("preprocess", "--pipeline", "ct", "--in", tmp_path / "in", "--shape", "24", "--quiet",
                          "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert f"warning: {tmp_path / 'in' / 'blank.nii.gz'}: every voxel is 0" in result.stderr


# 11. Ages.

@pytest.mark.parametrize("age, shown", [("1000", "1000"), ("1e308", "1e+308"), ("5", "5")])
def test_implausible_ages_in_a_sessions_table_name_file_and_line(tmp_path, age, shown):
    root = tmp_path / "dhcp"
    write_cohort("dhcp", root, subjects=1, shape=16, seed=0)
    sessions = next(root.glob("sub-*/sub-*_sessions.tsv"))
    lines = sessions.read_text().splitlines()
    header = lines[0].split("\t")
    row = lines[1].split("\t")
    row[header.index("scan_age")] = age
    sessions.write_text("\n".join([lines[0], "\t".join(row), *lines[2:]]) + "\n")
    refused(brainkernels("inr", "train", "--data", root, "--out", tmp_path / "run"),
            f"{sessions}: scan_age on line 2 is {shown}; expected a postmenstrual age in weeks, 20 to 60")


@pytest.mark.parametrize("option", [("--age-in", "1e308", "--age-out", "40"), ("--age-in", "40", "--ages", "30,1000")])
def test_implausible_ages_on_the_command_line(tmp_path, scan, option):
    result = brainkernels("inr", "predict", "--model", tmp_path, "--input", scan, *option, "--out", tmp_path / "out")
    assert result.returncode == 2 and "a postmenstrual age, 20 to 60 weeks" in result.stderr
    assert not (tmp_path / "out").exists()


# 12. Entries that look like scans but are not are named.

def test_skipped_entries_are_named(ppr_run, scan, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "folder.nii.gz").mkdir()
    (inputs / "loop.nii.gz").symlink_to(inputs / "loop.nii.gz")
    result = brainkernels("ppr", "detect", "--model", ppr_run, "--input", inputs, "--out", tmp_path / "maps")
    refused(result, f"{inputs}: no .nii or .nii.gz files in the folder or below it (skipped 2 entries")
    (inputs / "scan.nii.gz").write_bytes(scan.read_bytes())
    result = brainkernels("ppr", "detect", "--model", ppr_run, "--input", inputs, "--out", tmp_path / "maps", "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"warning: skipped {inputs / 'folder.nii.gz'}: a folder, not a file" in result.stderr
    assert f"warning: skipped {inputs / 'loop.nii.gz'}: a broken or looping symbolic link" in result.stderr
    result = brainkernels("preprocess", "--pipeline", "ct", "--in", inputs, "--shape", "24", "--quiet",
                          "--out", tmp_path / "pre")
    assert result.returncode == 0 and f"warning: skipped {inputs / 'loop.nii.gz'}" in result.stderr, result.stderr


# 13. Messages in plain words.

def test_a_reader_vote_is_shown_as_written(cq500, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(cq500 / "scans", cohort / "scans")
    reads = (cq500 / "reads.csv").read_text().splitlines()
    header = reads[0].split(",")
    row = reads[1].split(",")
    row[header.index("R1:ICH")] = "2"
    (cohort / "reads.csv").write_text("\n".join([reads[0], ",".join(row), *reads[2:]]) + "\n")
    refused(brainkernels("ppr", "train", "--data", cohort, "--out", tmp_path / "run"), "has 2")


def test_segment_warns_about_a_blank_sequence(brats, patchddm_run, tmp_path):
    source = sorted(path for path in brats.iterdir() if path.is_dir())[0]
    subject = shutil.copytree(source, tmp_path / source.name)
    flair = subject / f"{source.name}_flair.nii.gz"
    volume = load_nifti(flair)
    save_nifti(volume.with_data(torch.zeros_like(volume.data)), flair)
    result = brainkernels("patchddm", "segment", "--model", patchddm_run, "--input", subject, "--steps", "2",
                          "--ensemble", "1", "--device", "cpu", "--quiet", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert f"warning: {flair}: every voxel has the same value" in result.stderr


@pytest.mark.parametrize("argv, message", [
    (("ppr", "detect", "--tile", "0"), "--tile must be at least 1; got 0"),
    (("patchddm", "segment", "--steps", "0"), "--steps must be at least 1; got 0"),
    (("inr", "predict", "--age-in", "40", "--age-out", "44", "--fit-steps", "-1"), "--fit-steps must be at least 1"),
    (("inr", "evaluate", "--data", "cohort", "--fit-voxels", "0"), "--fit-voxels must be at least 1"),
    (("inr", "evaluate", "--data", "cohort", "--min-gap", "-1"), "--min-gap takes a number of weeks, 0 or more; got"),
    (("inr", "evaluate", "--data", "cohort", "--min-gap", "nan"), "--min-gap takes a number of weeks, 0 or more"),
])
def test_inference_counts_have_lower_bounds(tmp_path, argv, message):
    inputs = () if argv[1] == "evaluate" else ("--input", tmp_path, "--out", tmp_path / "out")
    result = brainkernels(*argv, "--model", tmp_path, *inputs)
    assert result.returncode == 2 and message in result.stderr and not (tmp_path / "out").exists()


def test_a_voxel_sample_larger_than_the_grid_uses_the_grid(inr_run, dhcp, tmp_path):
    t2w = sorted(dhcp.glob("sub-*/ses-*/anat/*_T2w.nii.gz"))[0]
    result = brainkernels("inr", "predict", "--model", inr_run, "--input", t2w, "--age-in", "40", "--age-out", "42",
                          "--fit-steps", "1", "--fit-voxels", str(10**12), "--device", "cpu", "--quiet",
                          "--out", tmp_path / "predicted.nii.gz")
    assert result.returncode == 0, result.stderr  # drawing 10^12 voxel indices ended in an allocation traceback

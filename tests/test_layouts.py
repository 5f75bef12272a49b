"""Cohort readers and subject splits, on tiny cohorts written by hand in the documented layouts
(docs/data-layouts.md). The writers below are also used by test_datasets.py."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from brainkernels.data.layouts import (
    MODALITIES,
    load_brats_image,
    load_brats_seg,
    load_cq500_mask,
    load_cq500_structures,
    load_dhcp_mask,
    normalise_age,
    read_brats,
    read_cq500,
    read_dhcp,
    scans_by_subject,
    split_by_subject,
    whole_tumour,
)

SHAPE = (8, 8, 8)
CQ500_FINDINGS = (
    "ICH",
    "IPH",
    "IVH",
    "SDH",
    "EDH",
    "SAH",
    "BleedLocation-Left",
    "BleedLocation-Right",
    "ChronicBleed",
    "Fracture",
    "CalvarialFracture",
    "OtherFracture",
    "MassEffect",
    "MidlineShift",
)


# --- writers -------------------------------------------------------------------------------


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), path)
    return path


def random_image(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def label_map(values: tuple[int, ...], shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A uint8 map holding each of ``values`` (and mostly the first)."""
    labels = np.full(shape, values[0], dtype=np.uint8)
    labels.flat[: len(values)] = values
    return labels


def reads_row(name: str, left=(0, 0, 0), right=(0, 0, 0), fracture=(0, 0, 0), ich=None) -> dict:
    """A reads.csv row with every CQ500 column; ``ich`` defaults to 'left or right' per reader."""
    row = {"name": name, "Category": "B1"}
    for index, reader in enumerate(("R1", "R2", "R3")):
        row.update({f"{reader}:{finding}": 0 for finding in CQ500_FINDINGS})
        row[f"{reader}:ICH"] = int(left[index] or right[index]) if ich is None else ich[index]
        row[f"{reader}:BleedLocation-Left"] = left[index]
        row[f"{reader}:BleedLocation-Right"] = right[index]
        row[f"{reader}:Fracture"] = fracture[index]
    return row


def write_cq500(root: Path, rows: list[dict], *, masks: bool = False, structures: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "reads.csv", index=False)
    for seed, row in enumerate(rows):
        write_nifti(root / "scans" / f"{row['name']}.nii.gz", 100 * random_image(seed))
        if masks:
            write_nifti(root / "masks" / f"{row['name']}.nii.gz", label_map((0, 1, 2)))
    if structures:
        write_nifti(root / "structures.nii.gz", label_map((0, 1, 2, 3)))
    return root


def write_brats_subject(root: Path, subject_id: str, *, seg: np.ndarray | None = None, with_seg: bool = True) -> Path:
    """A subject whose modality k (t1, t1ce, t2, flair) holds the value k + 1 everywhere."""
    folder = root / subject_id
    for index, modality in enumerate(MODALITIES):
        write_nifti(folder / f"{subject_id}_{modality}.nii.gz", np.full(SHAPE, index + 1, dtype=np.float32))
    if with_seg:
        write_nifti(folder / f"{subject_id}_seg.nii.gz", label_map((0, 1, 2, 4)) if seg is None else seg)
    return folder


def write_dhcp(root: Path, sessions: dict[str, list[tuple[str, float]]], *, masks: bool = True) -> Path:
    """A BIDS cohort; ``sessions`` maps each subject to its (session, age in weeks) pairs."""
    root.mkdir(parents=True, exist_ok=True)
    participants = pd.DataFrame({"participant_id": list(sessions), "birth_age": 40.0, "sex": "female"})
    participants.to_csv(root / "participants.tsv", sep="\t", index=False)
    for subject, subject_sessions in sessions.items():
        folder = root / f"sub-{subject}"
        folder.mkdir()
        session_ids, ages = zip(*subject_sessions, strict=True)
        table = pd.DataFrame({"session_id": session_ids, "scan_age": ages})
        table.to_csv(folder / f"sub-{subject}_sessions.tsv", sep="\t", index=False)
        for seed, (session, _) in enumerate(subject_sessions):
            anat = folder / f"ses-{session}" / "anat"
            write_nifti(anat / f"sub-{subject}_ses-{session}_T2w.nii.gz", random_image(seed))
            if masks:
                write_nifti(anat / f"sub-{subject}_ses-{session}_desc-brain_mask.nii.gz", label_map((1, 0)))
    return root


def corrupt(path: Path, kind: str) -> None:
    """Overwrite a NIfTI file with one of the broken inputs users meet."""
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif kind == "not nifti":
        path.write_bytes(gzip.compress(b"subject,age\nA,40\n"))
    elif kind == "2d":
        write_nifti(path, random_image(shape=(8, 8)))
    elif kind == "5d":
        write_nifti(path, random_image(shape=(8, 8, 8, 1, 2)))
    elif kind == "nan":
        array = random_image()
        array[1, 2, 3] = np.nan
        write_nifti(path, array)


BROKEN_FILES = [
    pytest.param("truncated", "not a readable NIfTI", id="truncated"),
    pytest.param("not nifti", "not a readable NIfTI", id="not-nifti"),
    pytest.param("2d", "expected a 3D or 4D image", id="2d"),
    pytest.param("5d", "expected a 3D or 4D image", id="5d"),
    pytest.param("nan", "NaN or infinite", id="nan"),
]


# --- every reader ----------------------------------------------------------------------------

READERS = [
    pytest.param(read_cq500, id="cq500"),
    pytest.param(read_brats, id="brats"),
    pytest.param(read_dhcp, id="dhcp"),
]


@pytest.mark.parametrize("reader", READERS)
def test_missing_folder_is_named(reader, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'}: no such folder"):
        reader(tmp_path / "nowhere")


@pytest.mark.parametrize("reader", READERS)
def test_empty_folder_is_named(reader, tmp_path):
    (tmp_path / ".DS_Store").write_text("hidden files do not count")
    with pytest.raises(ValueError, match=f"{tmp_path}: empty folder"):
        reader(tmp_path)


@pytest.mark.parametrize("reader", READERS)
def test_file_instead_of_folder(reader, tmp_path):
    (tmp_path / "cohort.zip").write_text("")
    with pytest.raises(NotADirectoryError, match="cohort.zip: not a folder"):
        reader(tmp_path / "cohort.zip")


# --- CQ500 -----------------------------------------------------------------------------------


def test_cq500_reads_scans_masks_and_structures(tmp_path):
    rows = [reads_row("CT-2"), reads_row("CT-10", fracture=(1, 1, 1))]
    root = write_cq500(tmp_path, rows, masks=True, structures=True)
    cohort = read_cq500(root)
    assert [scan.name for scan in cohort.scans] == ["CT-2", "CT-10"]  # reads.csv order
    assert cohort.scans[1].path == root / "scans" / "CT-10.nii.gz"
    assert cohort.scans[1].mask_path == root / "masks" / "CT-10.nii.gz"
    assert cohort.structures_path == root / "structures.nii.gz"
    assert [scan.healthy for scan in cohort.scans] == [True, False]
    assert torch.unique(load_cq500_mask(cohort.scans[0]).data).tolist() == [0, 1, 2]
    assert torch.unique(load_cq500_structures(cohort).data).tolist() == [0, 1, 2, 3]


def test_cq500_without_optional_files(tmp_path):
    cohort = read_cq500(write_cq500(tmp_path, [reads_row("CT-0")]))
    assert cohort.scans[0].mask_path is None and cohort.structures_path is None
    with pytest.raises(ValueError, match="'CT-0' has no mask"):
        load_cq500_mask(cohort.scans[0])
    with pytest.raises(FileNotFoundError, match="structures.nii.gz: no such file"):
        load_cq500_structures(cohort)


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        ((0, 0, 0), False),
        ((1, 0, 0), False),
        ((0, 0, 1), False),
        ((1, 1, 0), True),
        ((0, 1, 1), True),
        ((1, 1, 1), True),
    ],
)
def test_cq500_labels_are_majority_votes(tmp_path, votes, expected):
    rows = [reads_row("L", left=votes), reads_row("R", right=votes), reads_row("F", fracture=votes)]
    root = write_cq500(tmp_path, rows)
    left, right, fracture = read_cq500(root).scans
    assert (left.left_bleed, left.right_bleed, left.fracture) == (expected, False, False)
    assert (right.left_bleed, right.right_bleed, right.fracture) == (False, expected, False)
    assert (fracture.left_bleed, fracture.right_bleed, fracture.fracture) == (False, False, expected)
    assert [scan.healthy for scan in (left, right, fracture)] == [not expected] * 3


def test_cq500_bleed_vote_needs_ich_and_side(tmp_path):
    # Two readers mark the left side, but only one of them also reports a haemorrhage.
    root = write_cq500(tmp_path, [reads_row("CT-0", left=(1, 1, 0), ich=(1, 0, 0))])
    assert not read_cq500(root).scans[0].left_bleed


def test_cq500_missing_reads_csv(tmp_path):
    write_cq500(tmp_path, [reads_row("CT-0")])
    (tmp_path / "reads.csv").unlink()
    with pytest.raises(FileNotFoundError, match="reads.csv: no such file"):
        read_cq500(tmp_path)


def test_cq500_missing_columns_are_named(tmp_path):
    write_cq500(tmp_path, [reads_row("CT-0")])
    table = pd.read_csv(tmp_path / "reads.csv").drop(columns=["R2:Fracture", "R3:ICH"])
    table.to_csv(tmp_path / "reads.csv", index=False)
    with pytest.raises(ValueError, match=r"reads.csv: missing required column\(s\) R2:Fracture, R3:ICH"):
        read_cq500(tmp_path)


@pytest.mark.parametrize("value", ["2", "yes", "", "-1", "0.5"])
def test_cq500_votes_must_be_0_or_1(tmp_path, value):
    write_cq500(tmp_path, [reads_row("CT-0"), reads_row("CT-1")])
    table = pd.read_csv(tmp_path / "reads.csv", dtype=str)
    table.loc[1, "R2:BleedLocation-Left"] = value
    table.to_csv(tmp_path / "reads.csv", index=False)
    with pytest.raises(ValueError, match=r"column R2:BleedLocation-Left must hold 0 or 1; line 3 \(name 'CT-1'\)"):
        read_cq500(tmp_path)


def test_cq500_scan_listed_but_missing(tmp_path):
    write_cq500(tmp_path, [reads_row("CT-0"), reads_row("CT-1")])
    (tmp_path / "scans" / "CT-1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"scans/CT-1.nii.gz: no such file, but .*reads.csv lists 'CT-1'"):
        read_cq500(tmp_path)


def test_cq500_missing_scans_folder(tmp_path):
    pd.DataFrame([reads_row("CT-0")]).to_csv(tmp_path / "reads.csv", index=False)
    with pytest.raises(FileNotFoundError, match="scans: no such folder"):
        read_cq500(tmp_path)


@pytest.mark.parametrize("folder", ["scans", "masks"])
def test_cq500_file_without_row(tmp_path, folder):
    write_cq500(tmp_path, [reads_row("CT-0")], masks=True)
    write_nifti(tmp_path / folder / "CT-9.nii.gz", random_image())
    with pytest.raises(ValueError, match=f"{folder}/CT-9.nii.gz: no row named 'CT-9'"):
        read_cq500(tmp_path)


def test_cq500_non_nifti_file_in_scans(tmp_path):
    write_cq500(tmp_path, [reads_row("CT-0")])
    (tmp_path / "scans" / "notes.txt").write_text("")
    with pytest.raises(ValueError, match="notes.txt: not a NIfTI file"):
        read_cq500(tmp_path)


def test_cq500_ignores_unfinished_writes(tmp_path):
    write_cq500(tmp_path, [reads_row("CT-0")])
    (tmp_path / "scans" / ".CT-1.nii.gz.a8f3.nii.gz").write_bytes(b"")  # an atomic writer's temporary
    assert len(read_cq500(tmp_path).scans) == 1


def test_cq500_accepts_uncompressed_nifti_but_not_both(tmp_path):
    write_cq500(tmp_path, [reads_row("CT-0")])
    (tmp_path / "scans" / "CT-0.nii.gz").rename(tmp_path / "scans" / "CT-0.nii")
    assert read_cq500(tmp_path).scans[0].path.name == "CT-0.nii"
    write_nifti(tmp_path / "scans" / "CT-0.nii.gz", random_image())
    with pytest.raises(ValueError, match="both CT-0.nii and CT-0.nii.gz exist"):
        read_cq500(tmp_path)


def test_cq500_repeated_or_blank_names(tmp_path):
    write_cq500(tmp_path, [reads_row("CT-0")])
    pd.DataFrame([reads_row("CT-0"), reads_row("CT-0")]).to_csv(tmp_path / "reads.csv", index=False)
    with pytest.raises(ValueError, match="column name repeats 'CT-0' \\(line 3\\)"):
        read_cq500(tmp_path)
    pd.DataFrame([reads_row("CT-0"), reads_row("")]).to_csv(tmp_path / "reads.csv", index=False)
    with pytest.raises(ValueError, match="column name is empty on line 3"):
        read_cq500(tmp_path)


@pytest.mark.parametrize(("content", "message"), [("", "not a readable CSV"), ("name,R1:ICH\n", "missing required")])
def test_cq500_empty_reads_csv(tmp_path, content, message):
    write_cq500(tmp_path, [reads_row("CT-0")])
    (tmp_path / "reads.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_cq500(tmp_path)


def test_cq500_header_only_reads_csv(tmp_path):
    write_cq500(tmp_path, [reads_row("CT-0")])
    pd.DataFrame(columns=list(reads_row("x"))).to_csv(tmp_path / "reads.csv", index=False)
    with pytest.raises(ValueError, match="reads.csv: the table has a header but no rows"):
        read_cq500(tmp_path)


def test_cq500_names_keep_leading_zeros(tmp_path):
    assert read_cq500(write_cq500(tmp_path, [reads_row("007")])).scans[0].name == "007"


def test_cq500_mask_with_unexpected_values(tmp_path):
    root = write_cq500(tmp_path, [reads_row("CT-0")], masks=True)
    write_nifti(root / "masks" / "CT-0.nii.gz", label_map((0, 3, 7)))
    with pytest.raises(ValueError, match="CT-0.nii.gz: unexpected label values 3, 7; expected 0 none"):
        load_cq500_mask(read_cq500(root).scans[0])


# --- BraTS -----------------------------------------------------------------------------------


def test_brats_reads_training_and_validation_subjects(tmp_path):
    write_brats_subject(tmp_path, "BraTS20_Training_002")
    write_brats_subject(tmp_path, "BraTS20_Training_001")
    write_brats_subject(tmp_path, "BraTS20_Validation_001", with_seg=False)
    (tmp_path / "name_mapping.csv").write_text("BraTS_2020_subject_ID\n")
    subjects = read_brats(tmp_path)
    ids = ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Validation_001"]
    assert [subject.subject_id for subject in subjects] == ids
    first = subjects[0]
    assert list(first.modality_paths) == ["t1", "t1ce", "t2", "flair"]
    assert first.t1ce == tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_t1ce.nii.gz"
    assert first.seg == tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz"
    assert subjects[2].seg is None
    with pytest.raises(ValueError, match="'BraTS20_Validation_001' has no segmentation"):
        load_brats_seg(subjects[2])


def test_brats_image_has_modalities_in_channel_order(tmp_path):
    write_brats_subject(tmp_path, "BraTS20_Training_001")
    image = load_brats_image(read_brats(tmp_path)[0])
    assert image.data.shape == (4, *SHAPE)
    assert image.data.mean(dim=(1, 2, 3)).tolist() == [1.0, 2.0, 3.0, 4.0]


def test_brats_missing_modality(tmp_path):
    folder = write_brats_subject(tmp_path, "BraTS20_Training_001")
    (folder / "BraTS20_Training_001_flair.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="BraTS20_Training_001_flair.nii.gz: no such file"):
        read_brats(tmp_path)


def test_brats_only_files_no_subjects(tmp_path):
    (tmp_path / "survival_info.csv").write_text("")
    with pytest.raises(ValueError, match=f"{tmp_path}: no subject folders"):
        read_brats(tmp_path)


def test_brats_modalities_with_different_shapes(tmp_path):
    folder = write_brats_subject(tmp_path, "BraTS20_Training_001")
    write_nifti(folder / "BraTS20_Training_001_t2.nii.gz", random_image(shape=(8, 8, 7)))
    with pytest.raises(ValueError, match=r"_t2.nii.gz: shape \(8, 8, 7\) differs from .*_t1.nii.gz"):
        load_brats_image(read_brats(tmp_path)[0])


def test_brats_modalities_with_different_affines(tmp_path):
    folder = write_brats_subject(tmp_path, "BraTS20_Training_001")
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    write_nifti(folder / "BraTS20_Training_001_flair.nii.gz", random_image(), shifted)
    with pytest.raises(ValueError, match="_flair.nii.gz: affine differs"):
        load_brats_image(read_brats(tmp_path)[0])


def test_brats_seg_with_unexpected_values(tmp_path):
    write_brats_subject(tmp_path, "BraTS20_Training_001", seg=label_map((0, 1, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"_seg.nii.gz: unexpected label values 3, 5; expected 0 background"):
        load_brats_seg(read_brats(tmp_path)[0])


def test_brats_seg_and_whole_tumour(tmp_path):
    write_brats_subject(tmp_path, "BraTS20_Training_001")
    seg = load_brats_seg(read_brats(tmp_path)[0]).data
    assert torch.unique(seg).tolist() == [0, 1, 2, 4]
    assert torch.equal(whole_tumour(seg), seg != 0)
    assert whole_tumour(torch.tensor([0.0, 1.0, 2.0, 4.0])).tolist() == [False, True, True, True]


@pytest.mark.parametrize(("kind", "message"), BROKEN_FILES)
def test_brats_broken_modality_file_is_named(tmp_path, kind, message):
    folder = write_brats_subject(tmp_path, "BraTS20_Training_001")
    corrupt(folder / "BraTS20_Training_001_t1ce.nii.gz", kind)
    subject = read_brats(tmp_path)[0]  # readers look at names only
    with pytest.raises(ValueError, match=f"_t1ce.nii.gz: .*{message}"):
        load_brats_image(subject)


# --- dHCP ------------------------------------------------------------------------------------


def test_dhcp_reads_sessions_with_ages(tmp_path):
    write_dhcp(tmp_path, {"CC002": [("20", 44.0), ("10", 30.5)], "CC001": [("7", 40.0)]})
    scans = read_dhcp(tmp_path)
    assert [(s.subject_id, s.session_id, s.age_weeks) for s in scans] == [
        ("CC001", "7", 40.0),
        ("CC002", "10", 30.5),
        ("CC002", "20", 44.0),
    ]
    assert scans[1].t2w_path == tmp_path / "sub-CC002" / "ses-10" / "anat" / "sub-CC002_ses-10_T2w.nii.gz"
    assert scans[1].mask_path == tmp_path / "sub-CC002" / "ses-10" / "anat" / "sub-CC002_ses-10_desc-brain_mask.nii.gz"
    assert scans[1].normalised_age == pytest.approx((30.5 - 26) / 19)
    assert torch.unique(load_dhcp_mask(scans[0]).data).tolist() == [0, 1]


def test_dhcp_accepts_bids_prefixed_ids(tmp_path):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0)]})
    pd.DataFrame({"participant_id": ["sub-CC001"]}).to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    table = pd.DataFrame({"session_id": ["ses-7"], "scan_age": [40.0]})
    table.to_csv(tmp_path / "sub-CC001" / "sub-CC001_sessions.tsv", sep="\t", index=False)
    assert [(s.subject_id, s.session_id) for s in read_dhcp(tmp_path)] == [("CC001", "7")]
    pd.DataFrame({"participant_id": ["sub-CC001", "CC001"]}).to_csv(
        tmp_path / "participants.tsv", sep="\t", index=False
    )
    with pytest.raises(ValueError, match="column participant_id repeats 'CC001' \\(line 3\\)"):
        read_dhcp(tmp_path)


def test_dhcp_mask_is_optional(tmp_path):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0)]}, masks=False)
    scan = read_dhcp(tmp_path)[0]
    assert scan.mask_path is None
    with pytest.raises(ValueError, match="sub-CC001 ses-7 has no brain mask"):
        load_dhcp_mask(scan)


def test_normalised_age_maps_26_to_45_weeks_onto_0_to_1():
    assert (normalise_age(26.0), normalise_age(45.0), normalise_age(35.5)) == (0.0, 1.0, 0.5)


def test_dhcp_missing_participants_table(tmp_path):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0)]})
    (tmp_path / "participants.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="participants.tsv: no such file"):
        read_dhcp(tmp_path)


def test_dhcp_missing_sessions_table(tmp_path):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0)], "CC002": [("8", 41.0)]})
    (tmp_path / "sub-CC002" / "sub-CC002_sessions.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="sub-CC002/sub-CC002_sessions.tsv: no such file"):
        read_dhcp(tmp_path)


@pytest.mark.parametrize("column", ["session_id", "scan_age"])
def test_dhcp_sessions_table_missing_column(tmp_path, column):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0)]})
    path = tmp_path / "sub-CC001" / "sub-CC001_sessions.tsv"
    pd.read_csv(path, sep="\t").drop(columns=[column]).assign(other=1).to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match=rf"sub-CC001_sessions.tsv: missing required column\(s\) {column}"):
        read_dhcp(tmp_path)


@pytest.mark.parametrize(("age", "shown"), [("", "empty"), ("forty", "forty"), ("-3", "-3"), ("inf", "inf"),
                                             ("1000", "1000"), ("1e308", "1e\\+308")])
def test_dhcp_scan_age_must_be_weeks(tmp_path, age, shown):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0), ("8", 41.0)]})
    path = tmp_path / "sub-CC001" / "sub-CC001_sessions.tsv"
    pd.DataFrame({"session_id": ["7", "8"], "scan_age": ["40", age]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(
        ValueError,
        match=f"_sessions.tsv: scan_age on line 3 is {shown}; expected a postmenstrual age in weeks, 20 to 60",
    ):
        read_dhcp(tmp_path)


def test_dhcp_missing_participant_id_column(tmp_path):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0)]})
    pd.DataFrame({"subject": ["CC001"]}).to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match=r"participants.tsv: missing required column\(s\) participant_id"):
        read_dhcp(tmp_path)


def test_dhcp_session_listed_without_file(tmp_path):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0), ("9", 42.0)]})
    (tmp_path / "sub-CC001" / "ses-9" / "anat" / "sub-CC001_ses-9_T2w.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="sub-CC001_ses-9_T2w.nii.gz: no such file, but .* lists session '9'"):
        read_dhcp(tmp_path)


def test_dhcp_participant_listed_without_folder(tmp_path):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0)]})
    pd.DataFrame({"participant_id": ["CC001", "CC009"]}).to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    with pytest.raises(FileNotFoundError, match="sub-CC009: no such folder, but .* lists participant 'CC009'"):
        read_dhcp(tmp_path)


def test_dhcp_unlisted_subject_or_session_folder(tmp_path):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0)]})
    (tmp_path / "sub-CC001" / "ses-8").mkdir()
    with pytest.raises(ValueError, match="sub-CC001/ses-8: session folder not listed in .*sub-CC001_sessions.tsv"):
        read_dhcp(tmp_path)
    (tmp_path / "sub-CC001" / "ses-8").rmdir()
    (tmp_path / "sub-CC005").mkdir()
    with pytest.raises(ValueError, match="sub-CC005: folder not listed in .*participants.tsv"):
        read_dhcp(tmp_path)


def test_dhcp_repeated_session(tmp_path):
    write_dhcp(tmp_path, {"CC001": [("7", 40.0)]})
    path = tmp_path / "sub-CC001" / "sub-CC001_sessions.tsv"
    pd.DataFrame({"session_id": ["7", "7"], "scan_age": [40.0, 41.0]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match="column session_id repeats '7'"):
        read_dhcp(tmp_path)


def test_scans_by_subject_groups_sessions_youngest_first(tmp_path):
    write_dhcp(tmp_path, {"B": [("2", 44.0), ("1", 30.0), ("3", 35.0)], "A": [("1", 40.0)]})
    grouped = scans_by_subject(reversed(read_dhcp(tmp_path)))
    assert list(grouped) == ["A", "B"]
    assert [scan.age_weeks for scan in grouped["B"]] == [30.0, 35.0, 44.0]


# --- splits ----------------------------------------------------------------------------------


def test_split_sizes_and_disjointness():
    subjects = [f"sub-{i:03d}" for i in range(20)]
    split = split_by_subject(subjects)
    assert (len(split.train), len(split.validation), len(split.test)) == (14, 3, 3)
    assert sorted(split.train + split.validation + split.test) == subjects
    assert all(list(part) == sorted(part) for part in (split.train, split.validation, split.test))


def test_split_does_not_depend_on_input_order_or_repeats():
    subjects = [f"CC{i:05d}" for i in range(50)]
    shuffled = subjects * 3
    random.Random(1).shuffle(shuffled)
    assert split_by_subject(shuffled, seed=4) == split_by_subject(subjects, seed=4)
    assert split_by_subject(subjects, seed=4) != split_by_subject(subjects, seed=5)


def test_split_is_the_same_everywhere():
    # SHA-256 ranks make the split a fixed function of ids and seed, not of a library's RNG.
    split = split_by_subject([str(i) for i in range(10)], seed=0)
    assert (split.train, split.validation, split.test) == (
        ("2", "3", "4", "6", "7", "8", "9"),
        ("0", "5"),
        ("1",),
    )


def test_adding_a_subject_moves_few_others():
    subjects = [f"s{i}" for i in range(200)]
    before, after = split_by_subject(subjects), split_by_subject([*subjects, "s-new"])
    moved = sum(
        (subject in before.train) != (subject in after.train) or (subject in before.test) != (subject in after.test)
        for subject in subjects
    )
    assert moved <= 2


def test_sessions_of_a_subject_share_a_split(tmp_path):
    write_dhcp(tmp_path, {f"S{i}": [(str(k), 30.0 + k) for k in range(1 + i % 3)] for i in range(12)}, masks=False)
    scans = read_dhcp(tmp_path)
    split = split_by_subject(scan.subject_id for scan in scans)
    for subject, sessions in scans_by_subject(scans).items():
        homes = {name for name, part in vars(split).items() if subject in part}
        assert len(homes) == 1, f"{subject} ({len(sessions)} sessions) is in {homes}"


def test_split_fractions_may_leave_a_split_empty():
    split = split_by_subject(["a", "b", "c", "d"], fractions=(0.75, 0.25, 0.0))
    assert (len(split.train), len(split.validation), split.test) == (3, 1, ())


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.5, 0.5), (1.2, -0.1, -0.1), (float("nan"), 0.5, 0.5)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions must be three non-negative numbers summing to 1"):
        split_by_subject(["a", "b"], fractions=fractions)


def test_split_rejects_no_subjects():
    with pytest.raises(ValueError, match="no subject ids"):
        split_by_subject([])

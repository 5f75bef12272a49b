"""Tests for brainkernels.data.synth: synthetic cohorts with known ground truth.

Grids are small (32-64 voxels a side) so the whole file runs in well under a minute on two cores;
where a tolerance is needed it is derived from the voxel size of the grid the check runs on.
"""

import argparse
import csv
import filecmp
import json
import socket

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brainkernels.data.synth import (
    KINDS,
    HeadFindings,
    anatomy,
    cq500,
    dhcp,
    draw_findings,
    draw_subject,
    draw_tumour,
    head_circumference_cm,
    measure_circumference_mm,
    read_cohort,
    readers,
    render_brats,
    render_ct,
    render_neonate,
    write_cohort,
    write_figures,
)
from brainkernels.data.synth.command import KIND_HELP, register_command
from brainkernels.data.synth.ct import MASK_LABELS, STRUCTURE_LABELS, Fracture, FractureLine, Haemorrhage
from brainkernels.data.synth.grid import ADULT_FOV_MM
from brainkernels.data.synth.mr import SEG_LABELS
from brainkernels.data.synth.neonatal import NEONATAL_FOV_MM, _folded_anatomy, head_scale
from brainkernels.data.synth.subject import subject_grid
from brainkernels.data.volume import load_nifti
from brainkernels.errors import BrainkernelsError

CT_SHAPE = 48  # 4.7 mm voxels: the 6.5 mm skull still has voxels that are mostly bone
MR_SHAPE = 64
SMALL = 32
CQ500_READER_COLUMNS = (  # docs/data-layouts.md, in CQ500's order
    "ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right",
    "ChronicBleed", "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift",
)  # fmt: skip


@pytest.fixture(scope="module")
def cq500_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cq500")
    write_cohort("cq500", root, subjects=len(cq500.CASE_BLOCK), shape=CT_SHAPE, seed=3)
    return root


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    write_cohort("brats", root, subjects=3, shape=MR_SHAPE, seed=4)
    return root


@pytest.fixture(scope="module")
def dhcp_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dhcp")
    write_cohort("dhcp", root, subjects=4, shape=SMALL, seed=5)
    return root


def array(path):
    return load_nifti(path).data[0].numpy()


def on_disk_dtype(path):
    return nib.load(path).get_data_dtype()


def read_rows(path, delimiter):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        return reader.fieldnames, list(reader)


# --------------------------------------------------------------------------
# Reproducibility
# --------------------------------------------------------------------------


def test_same_seed_gives_identical_scans_and_another_seed_does_not():
    findings = draw_findings(np.random.default_rng(0), left=True, right=False, fracture=True)
    first = render_ct(draw_subject(7), findings, SMALL)
    again = render_ct(draw_subject(7), findings, SMALL)
    other = render_ct(draw_subject(8), findings, SMALL)
    assert np.array_equal(first.image.data, again.image.data)
    assert np.array_equal(first.mask.data, again.mask.data)
    assert not np.array_equal(first.image.data, other.image.data)
    assert draw_subject(7) == draw_subject(7) != draw_subject(8)


def test_same_seed_writes_bit_identical_files(tmp_path):
    for name in ("a", "b", "c"):
        write_cohort("brats", tmp_path / name, subjects=1, shape=24, seed=11 if name != "c" else 12)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 6  # five NIfTI files and cohort.json
    assert all(filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False) for f in files)
    assert not filecmp.cmp(tmp_path / "a" / files[0], tmp_path / "c" / files[0], shallow=False)


def test_a_larger_cohort_starts_with_the_subjects_of_a_smaller_one():
    assert cq500.plan(30, seed=2)[:7] == cq500.plan(7, seed=2)
    assert dhcp.plan(12, seed=2)[:3] == dhcp.plan(3, seed=2)


def test_cohort_json_regenerates_the_written_scans(cq500_root, dhcp_root):
    cohort = read_cohort(cq500_root)
    name, record = next((n, r) for n, r in cohort.records.items() if r["findings"]["haemorrhages"])
    scan = render_ct(cohort.subject(name), HeadFindings.from_dict(record["findings"]), cohort.shape)
    assert np.array_equal(scan.image.data[0].numpy(), array(cq500_root / "scans" / f"{name}.nii.gz"))
    assert np.array_equal(scan.mask.data[0].numpy(), array(cq500_root / "masks" / f"{name}.nii.gz"))

    neonates = read_cohort(dhcp_root)
    name, record = next(iter(neonates.records.items()))
    session = record["sessions"][0]
    t2 = render_neonate(neonates.subject(name), session["scan_age"], neonates.shape).t2
    session_id = session["session_id"]
    path = dhcp_root / f"sub-{name}" / f"ses-{session_id}" / "anat" / f"sub-{name}_ses-{session_id}_T2w.nii.gz"
    assert np.array_equal(t2.data[0].numpy(), array(path))


def test_cohort_json_records_the_generator_and_arguments(brats_root):
    description = json.loads((brats_root / "cohort.json").read_text())
    assert description["generator"] == "brainkernels.data.synth"
    assert (description["kind"], description["seed"], description["shape"]) == ("brats", 4, [MR_SHAPE] * 3)
    assert description["version"] and description["generator_version"] == 2
    assert [s["name"] for s in description["subjects"]] == [f"BraTS20_Training_00{i}" for i in (1, 2, 3)]
    identity = description["subjects"][0]["identity"]
    assert {"seed", "head_size", "rotation_deg", "translation_mm", "deformation_mm"} <= set(identity)


# --------------------------------------------------------------------------
# Template and geometry
# --------------------------------------------------------------------------


def test_template_is_read_without_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the MNI152 template must not be downloaded")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    grey, white, affine = anatomy._mni152_tissue()
    assert grey.shape == white.shape == (197, 233, 189)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")


def test_left_hemisphere_is_at_low_first_index(cq500_root):
    structures = load_nifti(cq500_root / "structures.nii.gz")
    assert structures.affine[0, 0] > 0  # D runs from left to right (RAS)
    labels = structures.data[0].numpy()
    left_d = np.argwhere(labels == STRUCTURE_LABELS["left"])[:, 0]
    right_d = np.argwhere(labels == STRUCTURE_LABELS["right"])[:, 0]
    assert left_d.max() < labels.shape[0] / 2 <= right_d.min()
    world_x = structures.affine[0, 0] * left_d.mean() + structures.affine[0, 3]
    assert world_x < 0


# --------------------------------------------------------------------------
# CQ500 layout
# --------------------------------------------------------------------------


def test_cq500_layout(cq500_root):
    header, rows = read_rows(cq500_root / "reads.csv", ",")
    expected = ["name", "Category"] + [f"{r}:{c}" for r in ("R1", "R2", "R3") for c in CQ500_READER_COLUMNS]
    assert header == expected
    names = [row["name"] for row in rows]
    assert len(names) == len(cq500.CASE_BLOCK)
    assert all(row[column] in ("0", "1") for row in rows for column in expected[2:])
    assert sorted(p.name for p in (cq500_root / "scans").iterdir()) == sorted(f"{n}.nii.gz" for n in names)
    assert sorted(p.name for p in (cq500_root / "masks").iterdir()) == sorted(f"{n}.nii.gz" for n in names)
    layout = ["cohort.json", "masks", "reads.csv", "scans", "structures.nii.gz"]
    assert sorted(p.name for p in cq500_root.iterdir()) == layout

    structures = load_nifti(cq500_root / "structures.nii.gz")
    assert on_disk_dtype(cq500_root / "structures.nii.gz") == np.uint8
    assert set(np.unique(structures.data).tolist()) == {0, 1, 2, 3}
    for name in names:
        scan = load_nifti(cq500_root / "scans" / f"{name}.nii.gz")
        assert on_disk_dtype(cq500_root / "scans" / f"{name}.nii.gz") == np.int16
        assert on_disk_dtype(cq500_root / "masks" / f"{name}.nii.gz") == np.uint8
        assert scan.shape == structures.shape == (CT_SHAPE,) * 3
        assert np.allclose(scan.affine, structures.affine)


def test_cq500_case_mix_has_healthy_scans_bleeds_on_both_sides_and_fractures(cq500_root):
    records = read_cohort(cq500_root).records.values()
    findings = [HeadFindings.from_dict(r["findings"]) for r in records]
    assert sum(f.healthy for f in findings) == 5
    assert sum(f.left_bleed for f in findings) >= 2 and sum(f.right_bleed for f in findings) >= 2
    assert sum(f.fracture is not None for f in findings) == 2
    assert any(f.fracture is not None and f.haemorrhages for f in findings)


def test_masks_mark_exactly_the_findings(cq500_root):
    for name, record in read_cohort(cq500_root).records.items():
        findings = HeadFindings.from_dict(record["findings"])
        mask = array(cq500_root / "masks" / f"{name}.nii.gz")
        image = array(cq500_root / "scans" / f"{name}.nii.gz")
        assert set(np.unique(mask).tolist()) <= set(MASK_LABELS.values())
        bleed, fracture = mask == MASK_LABELS["haemorrhage"], mask == MASK_LABELS["fracture"]
        assert bleed.any() == bool(findings.haemorrhages), name
        assert fracture.any() == (findings.fracture is not None), name
        if bleed.any():
            # Hyperdense blood: 60-80 HU, against about 30 HU of the surrounding brain.
            assert 55 < np.median(image[bleed]) < 85
        if fracture.any():
            # Bone (what a line thinner than these 4.7 mm voxels leaves of it, or a depressed fragment).
            assert np.median(image[fracture]) > 100


def test_haemorrhage_side_agrees_with_structures_and_reads(cq500_root):
    structures = array(cq500_root / "structures.nii.gz")
    _, rows = read_rows(cq500_root / "reads.csv", ",")
    reads = {row["name"]: row for row in rows}
    records = read_cohort(cq500_root).records
    checked = 0
    for name, record in records.items():
        findings = HeadFindings.from_dict(record["findings"])
        row = reads[name]
        left, right = (
            sum(int(row[f"{r}:ICH"]) and int(row[f"{r}:BleedLocation-{side}"]) for r in readers.READERS) >= 2
            for side in ("Left", "Right")
        )
        fracture = sum(int(row[f"{r}:Fracture"]) for r in readers.READERS) >= 2
        assert (left, right, fracture) == (findings.left_bleed, findings.right_bleed, findings.fracture is not None)
        if findings.left_bleed != findings.right_bleed:
            bleed = array(cq500_root / "masks" / f"{name}.nii.gz") == MASK_LABELS["haemorrhage"]
            side = "left" if findings.left_bleed else "right"
            # The structure map is the template's: a subject's size, pose and deformation move
            # its head by a few millimetres against it, as registration leaves real scans, so a
            # subdural bleed may lie in the template's skull or beyond; but never across the midline.
            labels = structures[bleed]
            hemisphere = labels[np.isin(labels, (STRUCTURE_LABELS["left"], STRUCTURE_LABELS["right"]))]
            assert (hemisphere == STRUCTURE_LABELS[side]).sum() >= 0.9 * len(hemisphere)
            midline = (STRUCTURE_LABELS["left"] == structures).any(axis=(1, 2)).nonzero()[0].max() + 0.5
            assert (np.argwhere(bleed)[:, 0].mean() < midline) == (side == "left")
            checked += 1
    assert checked >= 3


def test_readers_disagree_at_times_but_the_majority_is_the_truth():
    rng = np.random.default_rng(0)
    dissents = 0
    for index in range(400):
        truth = {"left": bool(index % 2), "right": bool(index % 3 == 0), "fracture": bool(index % 5 == 0)}
        findings = HeadFindings(
            tuple(known_haemorrhage(side) for side in ("left", "right") if truth[side]),
            known_fracture() if truth["fracture"] else None,
        )
        reads = readers.draw_reads(findings, rng)
        columns = {"left": "BleedLocation-Left", "right": "BleedLocation-Right", "fracture": "Fracture"}
        for label, column in columns.items():
            votes = [reads[f"{r}:{column}"] and (label == "fracture" or reads[f"{r}:ICH"]) for r in readers.READERS]
            assert (sum(votes) >= 2) == truth[label]
            dissents += len(set(votes)) > 1
        for r in readers.READERS:
            assert reads[f"{r}:ICH"] == (reads[f"{r}:BleedLocation-Left"] or reads[f"{r}:BleedLocation-Right"])
    # 12% per label: about 144 of 1200; the chance of fewer than 90 is negligible.
    assert 90 < dissents < 200


def known_haemorrhage(side):
    centre = (-40.0 if side == "left" else 40.0, 0.0, 20.0)
    return Haemorrhage("intraparenchymal", side, centre, (10.0, 10.0, 10.0), density_hu=70.0, seed=1)


def known_fracture():
    line = FractureLine((-60.0, 0.0, 60.0), (0.0, 1.0, 0.0), 40.0, 2.0, 1)
    return Fracture("linear", (-60.0, 0.0, 60.0), (-0.7, 0.0, 0.7), (line,), 0.0, 0.0, 0.0, 5.0, 30.0, 1)


def test_ct_hounsfield_units_are_plausible(cq500_root):
    structures = array(cq500_root / "structures.nii.gz")
    for path in sorted((cq500_root / "scans").iterdir())[:4]:
        image = array(path)
        assert image.min() >= -1024 and image.max() <= 3071
        head, bone = image > -500, image > 300  # nothing but bone is denser than 100 HU
        assert 0.1 < bone.sum() / head.sum() < 0.35
        assert np.median(image[bone]) > 700 and image.max() > 1000
        assert abs(image[:4, :4, -4:].mean() + 1000) < 10  # air in a corner of the field of view
        deep_brain = ndimage.binary_erosion(structures == STRUCTURE_LABELS["left"], iterations=2)
        assert 15 < np.median(image[deep_brain]) < 45  # grey 40, white 28, CSF 8 HU


# --------------------------------------------------------------------------
# BraTS layout and tumours
# --------------------------------------------------------------------------


def test_brats_layout(brats_root):
    folders = sorted(p.name for p in brats_root.iterdir() if p.is_dir())
    assert folders == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    for folder in folders:
        files = sorted(p.name for p in (brats_root / folder).iterdir())
        assert files == sorted(f"{folder}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg"))
        seg_path = brats_root / folder / f"{folder}_seg.nii.gz"
        assert on_disk_dtype(seg_path) == np.uint8
        assert set(np.unique(array(seg_path)).tolist()) == {0, 1, 2, 4}
        images = [load_nifti(brats_root / folder / f"{folder}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")]
        assert all(i.shape == (MR_SHAPE,) * 3 and np.allclose(i.affine, images[0].affine) for i in images)
        assert all(i.data[0, :3, :3, :3].abs().max() == 0 for i in images)  # skull-stripped background


def test_brats_contrasts_show_the_tumour_compartments(brats_root):
    folder = brats_root / "BraTS20_Training_001"
    seg = array(folder / "BraTS20_Training_001_seg.nii.gz")
    images = {m: array(folder / f"BraTS20_Training_001_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")}
    healthy = (images["t1"] > 0) & (seg == 0)
    mean = {m: {label: images[m][seg == label].mean() for label in (1, 2, 4)} for m in images}
    for m in images:
        mean[m][0] = images[m][healthy].mean()
    assert mean["t1ce"][SEG_LABELS["enhancing"]] > 1.3 * max(mean["t1ce"][0], mean["t1ce"][SEG_LABELS["necrosis"]])
    assert mean["flair"][SEG_LABELS["oedema"]] > 1.3 * mean["flair"][0]
    assert mean["t2"][SEG_LABELS["oedema"]] > mean["t2"][0]
    # Tissue contrasts: CSF dark on T1 and FLAIR, bright on T2.
    dark_on_t1 = healthy & (images["t1"] < np.percentile(images["t1"][healthy], 5))
    assert images["t2"][dark_on_t1].mean() > images["t2"][healthy].mean()


def test_tumour_compartments_nest(brats_root):
    for folder in sorted(p for p in brats_root.iterdir() if p.is_dir()):
        seg = array(folder / f"{folder.name}_seg.nii.gz")
        necrosis, core, whole = seg == 1, np.isin(seg, (1, 4)), seg > 0
        boxes = [np.argwhere(region) for region in (necrosis, core, whole)]
        for inner, outer in zip(boxes, boxes[1:]):
            assert (inner.min(axis=0) > outer.min(axis=0)).all() and (inner.max(axis=0) < outer.max(axis=0)).all()
        # The tumour core never touches healthy tissue: oedema surrounds it.
        assert not (ndimage.binary_dilation(core) & ~whole).any()
        # The enhancing rim encloses the necrosis (a rim thinner than a voxel may leave a gap).
        exposed = ndimage.binary_dilation(necrosis) & ~core
        assert exposed.sum() < 0.1 * necrosis.sum()
        assert ndimage.label(whole)[1] == 1


def test_tumours_lie_inside_the_brain():
    tumour = draw_tumour(np.random.default_rng(1))
    scan = render_brats(draw_subject(1), tumour, SMALL)
    assert (scan.images["t1"].data[0][scan.seg.data[0] > 0] > 0).all()


# --------------------------------------------------------------------------
# Neonatal development and the dHCP layout
# --------------------------------------------------------------------------


def test_head_circumference_curve():
    assert head_circumference_cm(26) == pytest.approx(24.0)
    assert head_circumference_cm(40) == pytest.approx(34.5)
    assert head_circumference_cm(45) == pytest.approx(37.0)
    ages = np.linspace(26, 45, 39)
    growth = np.diff(head_circumference_cm(ages))
    assert (growth > 0).all() and (np.diff(growth) < 0).all()  # growing, ever more slowly
    for age in (25.9, 45.1):
        with pytest.raises(ValueError, match="age_weeks"):
            head_circumference_cm(age)


def test_neonatal_brain_grows_along_the_head_circumference_curve():
    subject = draw_subject(21)
    spacing = NEONATAL_FOV_MM / MR_SHAPE
    young, old = 27.0, 44.0
    scans = {age: render_neonate(subject, age, MR_SHAPE) for age in (young, old)}
    brain = {age: measure_circumference_mm(s.brain_mask.data[0].numpy() > 0, spacing) for age, s in scans.items()}
    # Each extent is measured to whole voxels: the perimeter is off by at most pi voxels.
    tolerance = np.pi * spacing * (1 / brain[young] + 1 / brain[old])
    expected = head_circumference_cm(old) / head_circumference_cm(young)
    assert brain[old] / brain[young] == pytest.approx(expected, abs=tolerance)
    for age, circumference in brain.items():
        # Around the brain lie CSF, skull and scalp, 12-15 mm of the adult template's 595 mm
        # circumference, scaled with the head: the brain's is about 0.86 of the head's.
        assert 0.8 < circumference / 10 / (head_circumference_cm(age) * subject.head_size) < 0.95


def test_neonatal_contrast_and_folding_change_with_age():
    template = anatomy.template_anatomy(MR_SHAPE, ADULT_FOV_MM)
    young, old = (_folded_anatomy(template, maturity) for maturity in (0.05, 1.0))
    # Folding: the brain's surface (pial and sulcal) is larger in the older brain.
    assert boundary(old.grey + old.white > 0.5) > 1.1 * boundary(young.grey + young.white > 0.5)

    # Myelination: white matter, brighter than the cortex on T2, darkens towards it with age;
    # CSF stays brightest. Tissue is read from the subject's own (unfolded) maps.
    subject = draw_subject(22)
    contrast = {}
    for age in (27.0, 44.0):
        grid = subject_grid(subject, MR_SHAPE, NEONATAL_FOV_MM, scale=head_scale(age))
        maturity = (age - 26) / (45 - 26)
        grey, white, distance = _folded_anatomy(template, maturity).sample(grid.points_mm)
        t2 = render_neonate(subject, age, MR_SHAPE).t2.data[0].numpy()
        csf = (distance < -5) & (grey + white < 0.2)  # ventricles and sulci, mostly fluid
        wm, gm = t2[white > 0.9].mean(), t2[grey > 0.9].mean()
        assert t2[csf].mean() > wm > gm
        contrast[age] = wm / gm
    assert contrast[27.0] > contrast[44.0] + 0.2


def boundary(mask):
    return (mask & ~ndimage.binary_erosion(mask)).sum()


def test_identity_outweighs_a_week_of_development():
    subjects = [draw_subject(seed) for seed in (31, 32, 33, 34)]

    def scan(subject, age):
        return render_neonate(subject, age, SMALL).t2.data[0].numpy()

    def distance(a, b):  # smoothed, so that scan noise does not dominate
        return np.abs(ndimage.gaussian_filter(a - b, 1.0)).mean()

    at_36 = [scan(s, 36.0) for s in subjects]
    within = max(distance(scan(s, 35.0), image) for s, image in zip(subjects, at_36))
    between = min(distance(a, b) for i, a in enumerate(at_36) for b in at_36[i + 1:])
    assert within < between


def test_dhcp_layout(dhcp_root):
    header, participants = read_rows(dhcp_root / "participants.tsv", "\t")
    assert header == ["participant_id", "birth_age", "sex"]
    assert [row["participant_id"] for row in participants] == ["sub-SYN001", "sub-SYN002", "sub-SYN003", "sub-SYN004"]
    assert all(row["sex"] in ("female", "male") and 22 < float(row["birth_age"]) < 43 for row in participants)
    folders = [row["participant_id"] for row in participants]
    assert sorted(p.name for p in dhcp_root.iterdir()) == ["cohort.json", "participants.tsv", *folders]
    for row in participants:
        subject = row["participant_id"]
        header, sessions = read_rows(dhcp_root / subject / f"{subject}_sessions.tsv", "\t")
        assert header == ["session_id", "scan_age"]
        for session in sessions:
            assert session["session_id"].startswith("ses-") and 26 <= float(session["scan_age"]) <= 45
            anat = dhcp_root / subject / session["session_id"] / "anat"
            stem = f"{subject}_{session['session_id']}"
            assert sorted(p.name for p in anat.iterdir()) == [f"{stem}_T2w.nii.gz", f"{stem}_desc-brain_mask.nii.gz"]
            assert on_disk_dtype(anat / f"{stem}_desc-brain_mask.nii.gz") == np.uint8
            assert set(np.unique(array(anat / f"{stem}_desc-brain_mask.nii.gz")).tolist()) == {0, 1}


def test_dhcp_sessions_are_mostly_single_and_span_26_to_45_weeks():
    records = dhcp.plan(400, seed=0)
    sessions = [len(r["sessions"]) for r in records]
    assert set(sessions) == {1, 2, 3}
    assert 0.05 < np.mean(np.array(sessions) > 1) < 0.16
    ages = [s["scan_age"] for r in records for s in r["sessions"]]
    assert min(ages) < 28 and max(ages) > 44 and all(26 <= a <= 45 for a in ages)
    assert 38 < np.median(ages) < 42  # dHCP: median 40.57 weeks
    assert all(r["sessions"][0]["scan_age"] > r["birth_age"] for r in records)


def test_dhcp_share_of_rescanned_babies_can_be_raised(tmp_path):
    records = dhcp.plan(400, seed=0, rescanned=0.6)
    assert 0.4 < np.mean([len(r["sessions"]) > 1 for r in records]) < 0.6  # babies scanned late stay single
    with pytest.raises(ValueError, match="dhcp cohorts only"):
        write_cohort("brats", tmp_path / "b", subjects=1, shape=16, rescanned=0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        write_cohort("dhcp", tmp_path / "d", subjects=1, shape=16, rescanned=1.5)


def test_layout_readers_accept_the_synthetic_cohorts(cq500_root, brats_root, dhcp_root):
    layouts = pytest.importorskip("brainkernels.data.layouts")
    cohort = layouts.read_cq500(cq500_root)
    truth = {n: HeadFindings.from_dict(r["findings"]) for n, r in read_cohort(cq500_root).records.items()}
    assert [(s.left_bleed, s.right_bleed, s.fracture) for s in cohort.scans] == [
        (truth[s.name].left_bleed, truth[s.name].right_bleed, truth[s.name].fracture is not None) for s in cohort.scans
    ]
    assert layouts.load_cq500_structures(cohort).shape == (CT_SHAPE,) * 3
    assert [s.subject_id for s in layouts.read_brats(brats_root)] == sorted(read_cohort(brats_root).records)
    scans = layouts.read_dhcp(dhcp_root)
    assert len(scans) == sum(len(r["sessions"]) for r in read_cohort(dhcp_root).records.values())
    assert all(scan.mask_path is not None for scan in scans)


# --------------------------------------------------------------------------
# Command and figures
# --------------------------------------------------------------------------


def run_command(*arguments):
    parser = argparse.ArgumentParser(prog="brainkernels")
    register_command(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["synth", *arguments])
    return parsed.run(parsed)


def test_command_writes_a_cohort_and_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert run_command("dhcp", "--out", str(out), "--subjects", "2", "--shape", "24", "--seed", "1", "--quiet") == 0
    assert (out / "participants.tsv").is_file() and read_cohort(out).kind == "dhcp"
    assert capsys.readouterr().out == ""

    (out / "notes.txt").write_text("mine")
    with pytest.raises(BrainkernelsError, match="not empty.*--overwrite"):
        run_command("dhcp", "--out", str(out), "--subjects", "1", "--shape", "24", "--quiet")
    assert read_cohort(out).records.keys() == {"SYN001", "SYN002"}

    assert run_command("dhcp", "--out", str(out), "--subjects", "1", "--shape", "24", "--overwrite") == 0
    assert "wrote 1 synthetic dhcp subjects" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cohort.json", "notes.txt", "participants.tsv", "sub-SYN001"]


def test_command_options(capsys):
    assert set(KIND_HELP) == set(KINDS)
    for bad in (["--shape", "8"], ["--subjects", "0"], ["--seed", "x"]):
        with pytest.raises(SystemExit):
            run_command("cq500", "--out", "unused", *bad)
        assert bad[0] in capsys.readouterr().err
    with pytest.raises(ValueError, match="kind"):
        write_cohort("adni", "unused", subjects=1)


def test_figures(tmp_path):
    import matplotlib.pyplot as plt

    paths = write_figures(tmp_path, shape=MR_SHAPE, seed=1)
    assert [p.name for p in paths] == ["ct_findings.png", "brats_subject.png", "neonate_development.png"]
    for path in paths:
        image = plt.imread(path)
        assert image.shape[0] > 500 and image.shape[1] > 500
        assert image[..., :3].std() > 0.05  # not a blank canvas

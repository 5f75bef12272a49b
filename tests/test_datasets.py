"""torch Datasets over the three cohort layouts: item contents, options, transforms, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_layouts import (
    BROKEN_FILES,
    SHAPE,
    corrupt,
    label_map,
    random_image,
    reads_row,
    write_brats_subject,
    write_cq500,
    write_dhcp,
    write_nifti,
)
from torch.utils.data import DataLoader

from brainkernels.data.datasets import CQ500_LABELS, BraTSDataset, CQ500Dataset, DHCPDataset
from brainkernels.data.layouts import read_brats, read_cq500, read_dhcp


def plus_one(volume):
    return volume.with_data(volume.data + 1)


def crop_first_slice(volume):
    """A geometric transform: drops the first D slice and moves the origin accordingly."""
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, 0]
    return volume.with_data(volume.data[:, 1:], affine)


# --- CQ500 -----------------------------------------------------------------------------------


@pytest.fixture
def cq500(tmp_path):
    rows = [reads_row("CT-0"), reads_row("CT-1", right=(1, 1, 0)), reads_row("CT-2", fracture=(0, 1, 1))]
    return read_cq500(write_cq500(tmp_path, rows, masks=True))


def test_cq500_item(cq500):
    item = CQ500Dataset(cq500.scans, with_masks=True)[1]
    assert item["name"] == "CT-1"
    assert item["image"].shape == (1, *SHAPE) and item["image"].dtype == torch.float32
    assert item["affine"].shape == (4, 4) and item["affine"].dtype == torch.float64
    assert CQ500_LABELS == ("left_bleed", "right_bleed", "fracture")
    assert item["labels"].tolist() == [0.0, 1.0, 0.0]
    assert item["mask"].dtype == torch.int64 and torch.unique(item["mask"]).tolist() == [0, 1, 2]


def test_cq500_healthy_only_keeps_scans_without_findings(cq500):
    assert [scan.name for scan in CQ500Dataset(cq500.scans, healthy_only=True).scans] == ["CT-0"]
    assert len(CQ500Dataset(cq500.scans)) == 3
    with pytest.raises(ValueError, match="no healthy scans"):
        CQ500Dataset(cq500.scans[1:], healthy_only=True)


def test_cq500_masks_are_requested_only_where_they_exist(tmp_path):
    scans = read_cq500(write_cq500(tmp_path, [reads_row("CT-0"), reads_row("CT-1")])).scans
    assert "mask" not in CQ500Dataset(scans)[0]
    with pytest.raises(ValueError, match=r"scan 'CT-0' has no mask \(2 of 2 lack it\)"):
        CQ500Dataset(scans, with_masks=True)


def test_cq500_transform_moves_image_and_label_transform_moves_mask(cq500):
    plain = CQ500Dataset(cq500.scans, with_masks=True)[0]
    item = CQ500Dataset(cq500.scans, with_masks=True, transform=plus_one, label_transform=crop_first_slice)[0]
    assert torch.equal(item["image"], plain["image"] + 1)
    assert torch.equal(item["affine"], plain["affine"])  # the image's affine, after its transform
    assert torch.equal(item["mask"], plain["mask"][:, 1:])


def test_cq500_mask_on_another_grid(cq500):
    write_nifti(cq500.scans[0].mask_path, label_map((0, 1), shape=(8, 8, 4)))
    with pytest.raises(ValueError, match=r"masks/CT-0.nii.gz: shape \(8, 8, 4\) differs from .*scans/CT-0.nii.gz"):
        CQ500Dataset(cq500.scans, with_masks=True)[0]


@pytest.mark.parametrize(("kind", "message"), BROKEN_FILES)
def test_cq500_broken_scan_is_named(cq500, kind, message):
    corrupt(cq500.scans[2].path, kind)
    dataset = CQ500Dataset(cq500.scans)
    dataset[0]
    with pytest.raises(ValueError, match=f"scans/CT-2.nii.gz: .*{message}"):
        dataset[2]


def test_cq500_batches_with_default_collate(cq500):
    batch = next(iter(DataLoader(CQ500Dataset(cq500.scans, with_masks=True), batch_size=3)))
    assert batch["image"].shape == (3, 1, *SHAPE)
    assert batch["labels"].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert batch["name"] == ["CT-0", "CT-1", "CT-2"]


# --- BraTS -----------------------------------------------------------------------------------


@pytest.fixture
def brats(tmp_path):
    write_brats_subject(tmp_path, "BraTS20_Training_001")
    write_brats_subject(tmp_path, "BraTS20_Validation_001", with_seg=False)
    return read_brats(tmp_path)


def test_brats_whole_tumour_item(brats):
    item = BraTSDataset(brats[:1])[0]
    assert item["subject_id"] == "BraTS20_Training_001"
    assert item["image"].shape == (4, *SHAPE)
    assert item["whole_tumour"].dtype == torch.float32
    seg = torch.from_numpy(label_map((0, 1, 2, 4))).float()[None]
    assert torch.equal(item["whole_tumour"], (seg > 0).float())
    assert "seg" not in item


def test_brats_seg_item(brats):
    item = BraTSDataset(brats[:1], labels="seg")[0]
    assert item["seg"].dtype == torch.int64 and torch.unique(item["seg"]).tolist() == [0, 1, 2, 4]
    assert "whole_tumour" not in item


def test_brats_unlabelled_subjects(brats):
    assert set(BraTSDataset(brats, labels=None)[1]) == {"subject_id", "image", "affine"}
    with pytest.raises(ValueError, match="'BraTS20_Validation_001' has no segmentation; use labels=None"):
        BraTSDataset(brats)
    with pytest.raises(ValueError, match="labels must be 'whole_tumour', 'seg' or None; got 'tumour'"):
        BraTSDataset(brats, labels="tumour")


def test_brats_transforms(brats):
    item = BraTSDataset(brats[:1], labels="seg", transform=plus_one, label_transform=crop_first_slice)[0]
    assert item["image"].mean(dim=(1, 2, 3)).tolist() == [2.0, 3.0, 4.0, 5.0]
    assert item["seg"].shape == (1, SHAPE[0] - 1, *SHAPE[1:])


def test_brats_seg_on_another_grid(brats):
    shifted = np.eye(4)
    shifted[2, 3] = -1.0
    write_nifti(brats[0].seg, label_map((0, 1)), shifted)
    with pytest.raises(ValueError, match="_seg.nii.gz: affine differs from .*_t1.nii.gz"):
        BraTSDataset(brats[:1])[0]


# --- dHCP ------------------------------------------------------------------------------------


@pytest.fixture
def dhcp(tmp_path):
    return read_dhcp(write_dhcp(tmp_path, {"CC2": [("1", 30.0), ("2", 45.0)], "CC1": [("5", 40.0)]}))


def test_dhcp_items_share_the_subject_index_of_their_subject(dhcp):
    dataset = DHCPDataset(dhcp)
    assert dataset.subject_ids == ("CC1", "CC2")
    items = [dataset[i] for i in range(len(dataset))]
    assert [(item["subject_id"], item["session_id"], int(item["subject_index"])) for item in items] == [
        ("CC1", "5", 0),
        ("CC2", "1", 1),
        ("CC2", "2", 1),
    ]
    assert items[1]["age_weeks"].item() == 30.0
    assert items[1]["normalised_age"].item() == pytest.approx(4 / 19)
    assert items[2]["normalised_age"].item() == 1.0
    assert items[0]["image"].shape == (1, *SHAPE)
    assert "mask" not in items[0]


def test_dhcp_subject_index_counts_only_the_given_subjects(dhcp):
    # A training split gets latent indices 0 .. n - 1 for its own subjects.
    dataset = DHCPDataset([scan for scan in dhcp if scan.subject_id == "CC2"])
    assert dataset.subject_ids == ("CC2",) and int(dataset[1]["subject_index"]) == 0


def test_dhcp_mask(dhcp):
    item = DHCPDataset(dhcp, with_masks=True, transform=plus_one)[0]
    assert item["mask"].dtype == torch.bool and item["mask"].shape == (1, *SHAPE)
    assert torch.equal(item["mask"], torch.from_numpy(label_map((1, 0)))[None].bool())
    assert torch.equal(item["image"], torch.from_numpy(random_image(0))[None] + 1)


def test_dhcp_mask_required_where_requested(tmp_path):
    scans = read_dhcp(write_dhcp(tmp_path, {"CC1": [("5", 40.0)]}, masks=False))
    with pytest.raises(ValueError, match="sub-CC1 ses-5 has no brain mask"):
        DHCPDataset(scans, with_masks=True)


def test_dhcp_batches_with_default_collate(dhcp):
    batch = next(iter(DataLoader(DHCPDataset(dhcp, with_masks=True), batch_size=3)))
    assert batch["subject_index"].tolist() == [0, 1, 1]
    assert batch["normalised_age"].shape == (3,)
    assert batch["mask"].shape == (3, 1, *SHAPE)


@pytest.mark.parametrize("dataset", [CQ500Dataset, BraTSDataset, DHCPDataset])
def test_datasets_reject_no_records(dataset):
    with pytest.raises(ValueError, match="no .* given"):
        dataset([])

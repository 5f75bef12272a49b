"""The torch Dataset over the dHCP layout: item contents, options, transforms, batching."""

from __future__ import annotations

import pytest
import torch
from test_layouts import SHAPE, label_map, random_image, write_dhcp
from torch.utils.data import DataLoader

from brainkernels.data.datasets import DHCPDataset
from brainkernels.data.layouts import read_dhcp


def plus_one(volume):
    return volume.with_data(volume.data + 1)


def crop_first_slice(volume):
    """A geometric transform: drops the first D slice and moves the origin accordingly."""
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, 0]
    return volume.with_data(volume.data[:, 1:], affine)


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


def test_dhcp_transform_moves_image_and_label_transform_moves_mask(dhcp):
    plain = DHCPDataset(dhcp, with_masks=True)[0]
    item = DHCPDataset(dhcp, with_masks=True, transform=plus_one, label_transform=crop_first_slice)[0]
    assert torch.equal(item["image"], plain["image"] + 1)
    assert torch.equal(item["affine"], plain["affine"])  # the image's affine, after its transform
    assert torch.equal(item["mask"], plain["mask"][:, 1:])


def test_dhcp_mask_required_where_requested(tmp_path):
    scans = read_dhcp(write_dhcp(tmp_path, {"CC1": [("5", 40.0)]}, masks=False))
    with pytest.raises(ValueError, match="sub-CC1 ses-5 has no brain mask"):
        DHCPDataset(scans, with_masks=True)


def test_dhcp_batches_with_default_collate(dhcp):
    batch = next(iter(DataLoader(DHCPDataset(dhcp, with_masks=True), batch_size=3)))
    assert batch["subject_index"].tolist() == [0, 1, 1]
    assert batch["normalised_age"].shape == (3,)
    assert batch["mask"].shape == (3, 1, *SHAPE)


def test_dataset_rejects_no_records():
    with pytest.raises(ValueError, match="no scans given"):
        DHCPDataset([])

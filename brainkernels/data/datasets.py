"""A torch Dataset over the dHCP records of ``brainkernels.data.layouts``; each item loads one scan.

An item is a dict of tensors and id strings, so a DataLoader's default collate batches it.
``transform`` (Volume -> Volume) is applied to the image and ``label_transform`` to masks and
label maps, because geometric preprocessing (padding, cropping) must move both while intensity
preprocessing must leave labels alone (a ``label_transform`` that resamples should use nearest
neighbours). ``affine`` is the image's affine after ``transform``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from brainkernels.data.layouts.common import require_same_grid
from brainkernels.data.layouts.dhcp import DHCPScan, load_dhcp_mask
from brainkernels.data.volume import Volume, load_nifti

Transform = Callable[[Volume], Volume]


class DHCPDataset(Dataset):
    """Neonatal T2-weighted MR with age and the subject's index, which selects the subject's
    latent vector in the INR auto-decoder (one latent per subject, shared by its sessions).

    Item: ``subject_id``, ``session_id``, ``subject_index`` int64 (position of the subject in
    ``subject_ids``), ``age_weeks`` and ``normalised_age`` float32, ``image`` (1, D, H, W)
    float32, ``affine`` (4, 4) float64, and with ``with_masks`` a ``mask`` (1, D, H, W) bool.
    """

    def __init__(
        self,
        scans: Sequence[DHCPScan],
        *,
        with_masks: bool = False,
        transform: Transform | None = None,
        label_transform: Transform | None = None,
    ) -> None:
        self.scans = tuple(scans)
        if not self.scans:
            raise ValueError("DHCPDataset: no scans given")
        if with_masks:
            _require_all(
                self.scans, "mask_path", lambda scan: f"sub-{scan.subject_id} ses-{scan.session_id} has no brain mask"
            )
        self.subject_ids = tuple(sorted({scan.subject_id for scan in self.scans}))
        self._subject_index = {subject: index for index, subject in enumerate(self.subject_ids)}
        self.with_masks = with_masks
        self.transform = transform
        self.label_transform = label_transform

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, index: int) -> dict:
        scan = self.scans[index]
        image = load_nifti(scan.t2w_path)
        item = {
            "subject_id": scan.subject_id,
            "session_id": scan.session_id,
            "subject_index": torch.tensor(self._subject_index[scan.subject_id]),
            "age_weeks": torch.tensor(scan.age_weeks, dtype=torch.float32),
            "normalised_age": torch.tensor(scan.normalised_age, dtype=torch.float32),
        }
        if self.with_masks:
            mask = load_dhcp_mask(scan)
            require_same_grid(image, mask)
            item["mask"] = _apply(self.label_transform, mask).data > 0.5
        item.update(_image_entries(_apply(self.transform, image)))
        return item


def _apply(transform: Transform | None, volume: Volume) -> Volume:
    return volume if transform is None else transform(volume)


def _image_entries(image: Volume) -> dict:
    return {"image": image.data, "affine": torch.from_numpy(image.affine)}


def _require_all(records: Sequence, field: str, describe: Callable[[object], str]) -> None:
    """Fail, naming the first record, when any record lacks ``field`` (a file only some have)."""
    lacking = [record for record in records if getattr(record, field) is None]
    if lacking:
        more = f" ({len(lacking)} of {len(records)} lack it)" if len(lacking) > 1 else ""
        raise ValueError(describe(lacking[0]) + more)

"""BraTS2020 cohorts (PatchDDM): ``ROOT/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``, one folder
per subject; validation subjects have no ``seg`` (see docs/data-layouts.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from brainkernels.data.layouts.common import find_nifti, load_label_map, require_cohort_folder, visible_entries
from brainkernels.data.volume import Volume, load_nifti, read_header, stack_modalities

MODALITIES = ("t1", "t1ce", "t2", "flair")
"""Channel order of a subject's image."""
SEG_LABELS = frozenset({0, 1, 2, 4})
SEG_MEANING = "0 background, 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour"
_LAYOUT = "a BraTS2020 cohort: one BraTS20_*_XXX/ folder per subject"


@dataclass(frozen=True)
class BraTSSubject:
    subject_id: str
    t1: Path
    t1ce: Path
    t2: Path
    flair: Path
    seg: Path | None

    @property
    def modality_paths(self) -> dict[str, Path]:
        """The four image files in channel order (``MODALITIES``)."""
        return {modality: getattr(self, modality) for modality in MODALITIES}


def read_brats(root: str | Path) -> list[BraTSSubject]:
    """Describe the subjects under ``root``, sorted by id (no image is loaded). Files at the top
    level (BraTS ships ``name_mapping.csv`` and ``survival_info.csv`` there) are ignored."""
    root = require_cohort_folder(root, _LAYOUT)
    folders = [entry for entry in visible_entries(root) if entry.is_dir()]
    if not folders:
        raise ValueError(f"{root}: no subject folders (expected {_LAYOUT})")
    return [read_brats_subject(folder) for folder in folders]


def load_brats_image(subject: BraTSSubject) -> Volume:
    """The four modalities as a (4, D, H, W) volume in ``MODALITIES`` order, after checking that
    they share shape and affine."""
    return stack_modalities({modality: load_nifti(path) for modality, path in subject.modality_paths.items()})


def load_brats_seg(subject: BraTSSubject) -> Volume:
    """The label map (0, 1, 2, 4) of a training subject."""
    if subject.seg is None:
        raise ValueError(f"subject {subject.subject_id!r} has no segmentation (a validation subject?)")
    return load_label_map(subject.seg, SEG_LABELS, SEG_MEANING)


def check_subjects(subjects: list[BraTSSubject]) -> None:
    """Check every subject before training uses any: the headers of its sequences and label map
    agree in shape and affine, and its labels are BraTS labels. Only the label maps are read whole;
    without this a bad subject ends a run when it is first drawn, perhaps hours in."""
    for subject in subjects:
        headers = {path: _grid(path) for path in (*subject.modality_paths.values(), subject.seg) if path is not None}
        (first, grid), *others = headers.items()
        for path, other in others:
            if other[0] != grid[0]:
                raise ValueError(f"{path}: shape {other[0]} differs from {first}: {grid[0]}")
            if not np.allclose(other[1], grid[1], atol=1e-4):
                raise ValueError(f"{path}: affine differs from {first} (not co-registered)")
        load_brats_seg(subject)


def _grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine from a NIfTI header (the data are not read)."""
    header = read_header(path)
    return tuple(header.get_data_shape()), header.get_best_affine()


def whole_tumour(seg: Tensor) -> Tensor:
    """The whole-tumour mask (every tumour label merged, as PatchDDM segments it): ``seg > 0``."""
    return seg > 0


def read_brats_subject(folder: str | Path) -> BraTSSubject:
    """Describe one subject folder (``<id>/<id>_{t1,t1ce,t2,flair}[, _seg].nii.gz``)."""
    folder = Path(folder)
    subject_id = folder.name
    paths = {}
    for modality in (*MODALITIES, "seg"):
        paths[modality] = find_nifti(folder, f"{subject_id}_{modality}")
        if paths[modality] is None and modality != "seg":
            raise FileNotFoundError(f"{folder / f'{subject_id}_{modality}.nii.gz'}: no such file")
    return BraTSSubject(subject_id, **paths)

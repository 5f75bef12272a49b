"""Readers for the on-disk layouts of the three data sets (docs/data-layouts.md), and subject
splits. A reader describes a cohort as frozen records without loading any image, and fails with
an error naming the file, column or row when the files and tables disagree."""

from brainkernels.data.layouts.brats import (
    MODALITIES,
    BraTSSubject,
    load_brats_image,
    load_brats_seg,
    read_brats,
    whole_tumour,
)
from brainkernels.data.layouts.cq500 import CQ500Cohort, CQ500Scan, load_cq500_mask, load_cq500_structures, read_cq500
from brainkernels.data.layouts.dhcp import (
    AGE_RANGE_WEEKS,
    DHCPScan,
    load_dhcp_mask,
    normalise_age,
    read_dhcp,
    scans_by_subject,
)
from brainkernels.data.layouts.splits import SubjectSplit, split_by_subject

__all__ = [
    "AGE_RANGE_WEEKS",
    "MODALITIES",
    "BraTSSubject",
    "CQ500Cohort",
    "CQ500Scan",
    "DHCPScan",
    "SubjectSplit",
    "load_brats_image",
    "load_brats_seg",
    "load_cq500_mask",
    "load_cq500_structures",
    "load_dhcp_mask",
    "normalise_age",
    "read_brats",
    "read_cq500",
    "read_dhcp",
    "scans_by_subject",
    "split_by_subject",
    "whole_tumour",
]

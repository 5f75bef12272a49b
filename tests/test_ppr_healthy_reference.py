"""The healthy reference: per-voxel mean and spread of the healthy training scans' maps, and a
scan's map measured against them."""

import pytest
import torch

from brainkernels.data.volume import Volume
from brainkernels.ppr import healthy_reference
from brainkernels.ppr.data import PreparedScan
from brainkernels.ppr.healthy_reference import HealthyReference, build, error_maps, structure_score
from brainkernels.ppr.model import PPRNet
from brainkernels.runtime import RunFolder


def scans(count, shape=(22, 23, 24), seed=0):
    generator = torch.Generator().manual_seed(seed)
    result = []
    for index in range(count):
        data = torch.rand(1, *shape, generator=generator)
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[3:-3, 2:-2, 4:-4 - index] = True  # heads of slightly different extent
        result.append(PreparedScan(f"scan{index}", Volume(data * mask, torch.eye(4, dtype=torch.float64)), mask))
    return result


def test_reference_is_the_mean_and_spread_of_the_healthy_maps():
    torch.manual_seed(0)
    model = PPRNet(m=1, patch=19).eval()
    healthy = scans(3)
    reference = build(model, healthy, "step-00000005.pt", torch.device("cpu"))
    maps = torch.stack([error_maps(model, scan)["ppr"] for scan in healthy])
    torch.testing.assert_close(reference.mean["ppr"], maps.mean(0))
    torch.testing.assert_close(reference.std["ppr"], maps.std(0))
    heads = healthy[0].mask | healthy[1].mask | healthy[2].mask
    assert reference.floor["ppr"] == pytest.approx(float(maps.std(0)[heads].median()), rel=1e-5)
    assert reference.floor["ppr"] > 0
    # A healthy scan's own map lies within a few spreads of the mean; a map raised by 1 at one voxel stands out there.
    own = reference.normalise({"ppr": maps[0]})["ppr"]
    raised = maps[0].clone()
    raised[10, 10, 10] += 1.0
    assert reference.normalise({"ppr": raised})["ppr"][10, 10, 10] > own.abs().max() + 5


def test_normalise_and_structure_score_by_hand():
    reference = HealthyReference("step-00000001.pt", {"ppr": torch.full((2, 2, 2), 0.5)},
                                 {"ppr": torch.full((2, 2, 2), 0.25)}, {"ppr": 0.25})
    error = torch.arange(8.0).reshape(2, 2, 2) / 8
    torch.testing.assert_close(reference.normalise({"ppr": error})["ppr"], (error - 0.5) / 0.5)
    region = torch.ones(2, 2, 2, dtype=torch.bool)
    assert structure_score(error, region) == 7 / 8  # 0.1 % of 8 voxels: the single highest one
    values = torch.arange(5000.0)
    assert structure_score(values, torch.ones(5000, dtype=torch.bool)) == sum(range(4995, 5000)) / 5


def test_build_needs_two_scans():
    with pytest.raises(ValueError, match="at least 2 scans"):
        build(PPRNet(m=1, patch=19), scans(1), "step-00000001.pt", torch.device("cpu"))


def test_saved_reference_loads_for_its_checkpoint_only(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.create()
    reference = build(PPRNet(m=1, patch=19).eval(), scans(2), "step-00000004.pt", torch.device("cpu"))
    healthy_reference.save(run, reference)
    assert healthy_reference.load(run) is None  # no checkpoint in the run
    (run.checkpoints / "step-00000004.pt").write_bytes(b"")
    loaded = healthy_reference.load(run)
    for field in ("mean", "std"):  # kept in half precision on disk, used in single
        saved, original = getattr(loaded, field)["ppr"], getattr(reference, field)["ppr"]
        assert saved.dtype == torch.float32 and not torch.equal(saved, original)
        torch.testing.assert_close(saved, original, rtol=1e-3, atol=1e-6)
    assert (run.root / healthy_reference.FILE).stat().st_size < reference.mean["ppr"].numel() * 4 * 1.1
    assert loaded.floor == reference.floor
    (run.checkpoints / "step-00000008.pt").write_bytes(b"")
    assert healthy_reference.load(run) is None

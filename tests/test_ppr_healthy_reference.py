"""The healthy reference: per-voxel mean and spread of the healthy training scans' maps (each axis
of PPR's displacement), and a scan's map measured against them."""

import pytest
import torch

from brainkernels.data.volume import Volume
from brainkernels.errors import BrainkernelsError
from brainkernels.ppr import healthy_reference
from brainkernels.ppr.data import PreparedScan
from brainkernels.ppr.healthy_reference import HealthyReference, build, error_maps, magnitude, structure_score
from brainkernels.ppr.infer import anomaly_map
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
    assert maps.shape == (3, 3, 22, 23, 24)  # scans, axes of the displacement, voxels
    torch.testing.assert_close(reference.mean["ppr"], maps.mean(0))
    torch.testing.assert_close(reference.std["ppr"], maps.std(0))
    heads = healthy[0].mask | healthy[1].mask | healthy[2].mask
    for axis in range(3):
        assert reference.floor["ppr"][axis] == pytest.approx(float(maps.std(0)[axis][heads].median()), rel=1e-5)
    assert (reference.floor["ppr"] > 0).all()
    # A healthy scan's own map lies within a few spreads of the mean; a map moved by 1 along one axis at one voxel
    # stands out there.
    own = reference.normalise({"ppr": maps[0]})["ppr"]
    assert own.shape == (22, 23, 24)
    moved = maps[0].clone()
    moved[1, 10, 10, 10] += 1.0
    assert reference.normalise({"ppr": moved})["ppr"][10, 10, 10] > own.abs().max() + 5


def test_the_displacement_is_the_position_error_inside_the_head():
    torch.manual_seed(0)
    model = PPRNet(m=1, patch=19).eval()
    scan = scans(1)[0]
    displacement = error_maps(model, scan)["ppr"]
    torch.testing.assert_close(magnitude(displacement), anomaly_map(model, scan.volume.data, tile=64) * scan.mask)


def test_a_patch_placed_off_the_other_way_stands_out_though_its_error_is_usual():
    # Healthy patches here are placed 0.1 too far along the first axis; this one 0.1 too short: the
    # same position error, but 0.2 / (0.01 + 0.01) = 10 spreads off along that axis.
    shape = (3, 2, 2, 2)
    reference = HealthyReference("step-00000001.pt", torch.ones(2, 2, 2, dtype=torch.bool),
                                 {"ppr": torch.zeros(shape).index_fill_(0, torch.tensor([0]), 0.1)},
                                 {"ppr": torch.full(shape, 0.01)}, {"ppr": torch.full((3,), 0.01)})
    placed = torch.zeros(shape).index_fill_(0, torch.tensor([0]), -0.1)
    torch.testing.assert_close(magnitude(placed), magnitude(reference.mean["ppr"]))
    torch.testing.assert_close(reference.normalise({"ppr": placed})["ppr"],
                               torch.full((2, 2, 2), (100.0 / 3) ** 0.5))


def test_normalise_and_structure_score_by_hand():
    # One channel (the autoencoder's maps): the signed z-score, so an error below the healthy one is no anomaly.
    reference = HealthyReference("step-00000001.pt", torch.ones(2, 2, 2, dtype=torch.bool),
                                 {"erosion": torch.full((1, 2, 2, 2), 0.5)},
                                 {"erosion": torch.full((1, 2, 2, 2), 0.25)}, {"erosion": torch.tensor([0.25])})
    error = torch.arange(8.0).reshape(1, 2, 2, 2) / 8
    torch.testing.assert_close(reference.normalise({"erosion": error})["erosion"], (error[0] - 0.5) / 0.5)
    region = torch.ones(2, 2, 2, dtype=torch.bool)
    assert structure_score(error[0], region) == 7 / 8  # 0.1 % of 8 voxels: the single highest one
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
    # Only the head voxels are stored: outside the heads every healthy map is zero.
    assert not reference.mean["ppr"][:, ~reference.heads].any() and not reference.std["ppr"][:, ~reference.heads].any()
    assert (run.root / healthy_reference.FILE).stat().st_size < reference.heads.sum() * 3 * 2 * 2 * 1.1 + 10_000
    torch.testing.assert_close(loaded.heads, reference.heads)
    torch.testing.assert_close(loaded.floor, reference.floor, rtol=0, atol=0)
    (run.checkpoints / "step-00000008.pt").write_bytes(b"")
    assert healthy_reference.load(run) is None


def test_a_reference_without_the_displacement_axes_is_refused(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.create()
    (run.checkpoints / "step-00000004.pt").write_bytes(b"")
    torch.save({"checkpoint": "step-00000004.pt", "mean": {"ppr": torch.zeros(4, 4, 4)},
                "std": {"ppr": torch.ones(4, 4, 4)}, "floor": {"ppr": 0.5}}, run.root / healthy_reference.FILE)
    with pytest.raises(BrainkernelsError, match="has no heads.*brainkernels ppr train --resume"):
        healthy_reference.load(run)

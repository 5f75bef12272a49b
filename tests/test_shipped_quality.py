"""The models shipped with brainkernels still reach their model cards' figures: each is evaluated on
its card's held-out synthetic cohort (generated now, with a seed its training never saw), and the
test fails when a metric drops below the card's value minus its tolerance. A change to the kernels,
the generator or the inference code that silently breaks a method turns this red."""

from __future__ import annotations

import pytest

from brainkernels.demo import inr, patchddm, ppr, shipped
from brainkernels.inr.train import INRConfig
from brainkernels.patchddm.train import PatchDDMConfig
from brainkernels.ppr.train import PPRConfig
from brainkernels.runtime import shipped as runtime_shipped

# What this version ships: the demo module that evaluates each, and its config class.
SHIPPED = {
    ppr.SHIPPED: (ppr, PPRConfig),
    patchddm.SHIPPED: (patchddm, PatchDDMConfig),
    inr.SHIPPED: (inr, INRConfig),
}
CARD_TRAINING_KEYS = ("command", "cohort", "generator", "seed", "wall_time", "hardware")


@pytest.mark.parametrize("name", SHIPPED)
def test_the_card_says_how_it_was_trained_and_evaluates_on_unseen_subjects(name):
    module, config_class = SHIPPED[name]
    card = shipped.card(config_class, name)
    assert card is not None, f"{name} is not shipped"
    assert [key for key in CARD_TRAINING_KEYS if key not in card["training"]] == []
    assert "not for clinical use" in card["intended_use"]
    assert set(card["metrics"]) and all({"value", "tolerance"} <= set(spec) for spec in card["metrics"].values())
    shipped.check_disjoint(card)  # raises when a seed or a subject is shared
    kind, training = shipped.cohort_of(card, "training")
    _, evaluation = shipped.cohort_of(card, "evaluation")
    assert training.seed != evaluation.seed
    assert not shipped.subject_seeds(kind, training) & shipped.subject_seeds(kind, evaluation)


def test_a_card_whose_evaluation_cohort_overlaps_training_is_refused():
    card = shipped.card(PPRConfig, ppr.SHIPPED)
    same = {**card, "evaluation": {**card["evaluation"], "cohort": card["training"]["cohort"]}}
    with pytest.raises(Exception, match="has the training seed"):
        shipped.check_disjoint(same)


def test_the_shipped_models_are_a_few_megabytes():
    sizes = {name: sum(path.stat().st_size for path in runtime_shipped.shipped_models(config_class)[name].rglob("*"))
             for name, (_, config_class) in SHIPPED.items()}
    assert sum(sizes.values()) < 8 * 2**20, sizes


@pytest.mark.parametrize("name", SHIPPED)
def test_the_model_reaches_its_card(name, tmp_path):
    module, config_class = SHIPPED[name]
    card = shipped.card(config_class, name)
    measured, _ = module.evaluate_shipped(card, tmp_path, device="cpu", quiet=True)
    below = {metric: (measured[metric], spec["value"] - spec["tolerance"]) for metric, spec in card["metrics"].items()
             if not measured[metric] >= spec["value"] - spec["tolerance"]}
    assert below == {}, f"{name}: metric (measured, lowest allowed): {below}"

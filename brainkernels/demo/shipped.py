"""The models shipped with brainkernels as the demo and the quality test evaluate them: each on a
synthetic cohort generated afresh from the evaluation cohort of its model card, whose seed differs
from the training cohort's, so no evaluated subject was ever seen in training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainkernels.data.synth.cohort import LAYOUTS
from brainkernels.demo import cohorts
from brainkernels.demo.settings import Cohort
from brainkernels.errors import BrainkernelsError
from brainkernels.runtime import shipped as runtime_shipped

ShippedCard = dict[str, Any]


def card(config_class: type, name: str) -> ShippedCard | None:
    """The model card of the shipped model ``name``, or None if this version has none."""
    folder = runtime_shipped.shipped_models(config_class).get(name)
    return None if folder is None else runtime_shipped.read_card(folder)


def builtin(card: ShippedCard) -> str:
    """What ``--model`` takes for the card's model."""
    return runtime_shipped.PREFIX + card["name"]


def cohort_of(card: ShippedCard, part: str) -> tuple[str, Cohort]:
    """(kind, cohort) of the card's ``training`` or ``evaluation`` cohort."""
    spec = dict(card[part]["cohort"])
    return spec.pop("kind"), Cohort(**spec)


def evaluation_data(card: ShippedCard, out: Path, quiet: bool) -> Path:
    """The card's evaluation cohort, written to ``out``."""
    kind, cohort = cohort_of(card, "evaluation")
    return cohorts.synthesise(kind, cohort, out, quiet)


def subject_seeds(kind: str, cohort: Cohort) -> set[int]:
    """The seeds of the cohort's synthetic subjects: a subject's identity (anatomy, pose, texture)
    follows from its seed."""
    extra = {} if cohort.rescanned is None else {"rescanned": cohort.rescanned}
    return {record["identity"]["seed"] for record in LAYOUTS[kind].plan(cohort.subjects, cohort.seed, **extra)}


def check_disjoint(card: ShippedCard) -> None:
    """Refuse a card whose evaluation cohort shares its seed or any subject with the training cohort."""
    (kind, training), (evaluation_kind, evaluation) = cohort_of(card, "training"), cohort_of(card, "evaluation")
    if training.seed == evaluation.seed:
        raise BrainkernelsError(f"model card of {card['name']}: the evaluation cohort has the training seed "
                                f"{training.seed}")
    shared = subject_seeds(kind, training) & subject_seeds(evaluation_kind, evaluation)
    if shared:
        raise BrainkernelsError(f"model card of {card['name']}: {len(shared)} evaluation subject(s) were in training")


def metric_rows(card: ShippedCard, measured: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, measured now, the card's figure ± tolerance) for the report."""
    return [(name, f"{measured[name]:.3f}", f"{spec['value']:.3f} ± {spec['tolerance']:.3f}")
            for name, spec in card["metrics"].items()]


def provenance(card: ShippedCard, data_name: str, evaluate_options: str = "") -> str:
    """How the card's model was trained, and the commands that evaluate it as the demo does."""
    kind, cohort = cohort_of(card, "evaluation")
    return (f"Trained with `{card['training']['command']}` ({card['training']['wall_time']} on "
            f"{card['training']['hardware']}). Evaluate it yourself: `{cohorts.command(kind, cohort, data_name)}`, "
            f"`brainkernels {card['method']} evaluate --model {builtin(card)} --data {data_name} --subjects all"
            f"{evaluate_options} --out evaluation`.")

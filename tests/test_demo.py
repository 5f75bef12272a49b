"""``brainkernels demo`` end to end at a tiny size: every method's section, the memory table and
the wall times reach report.html (self-contained) and report.md; a failing method is reported
without hiding the others; the output folder is never silently overwritten."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from html import unescape

import pytest
import tomli_w

from brainkernels.data.synth.cohort import write_cohort
from brainkernels.demo import inr, memory, patchddm, ppr, run
from brainkernels.demo.report import Section, to_html, to_markdown
from brainkernels.demo.settings import DEFAULT, QUICK, Cohort, DemoSettings
from brainkernels.errors import BrainkernelsError
from brainkernels.inr import train as inr_train
from brainkernels.inr.train import INRConfig
from brainkernels.memory import Footprint
from brainkernels.patchddm import train as patchddm_train
from brainkernels.patchddm.train import PatchDDMConfig
from brainkernels.ppr import train as ppr_train
from brainkernels.ppr.train import PPRConfig
from brainkernels.runtime import shipped

TINY = DemoSettings(
    level="quick",
    ct=Cohort(subjects=10, shape=32),
    ppr=PPRConfig(network_size=1, patch=19, patches_per_step=8, steps=2, checkpoint_every=2),
    mr=Cohort(subjects=10, shape=24),
    patchddm=PatchDDMConfig(channels=4, channel_mult=(1, 2, 2), patch=12, steps=2, checkpoint_every=2),
    sampling_steps=2, ensemble=(1, 2),
    neonatal=Cohort(subjects=8, shape=16, rescanned=0.8),
    inr=INRConfig(dims=2, width=16, depth=3, latent_size=8, batch_size=2, steps=2, checkpoint_every=2),
    fit_steps=2, evaluate_trained=True, ages=(30.0, 40.0),
)
SECTIONS = ("What this is", "PPR: the shipped model builtin:ppr-synthetic-ct on a held-out cohort",
            "PPR: training from scratch", "PatchDDM: the shipped model", "PatchDDM: training from scratch",
            "INR: the shipped model", "INR: training from scratch", "Memory at the papers' sizes",
            "Settings and wall time")
# Toy stand-ins for the shipped models, each with a card whose cohorts are as small as TINY's.
TOYS = {
    "ppr": (ppr_train, ppr.SHIPPED, dict(kind="cq500", subjects=10, shape=32, seed=5), {},
            ["left hemisphere bleed AUROC"], lambda data, out: ppr_train.train(data, out, TINY.ppr, quiet=True)),
    "patchddm": (patchddm_train, patchddm.SHIPPED, dict(kind="brats", subjects=10, shape=24, seed=6),
                 {"steps": 2, "ensemble": [1, 2]}, ["Dice, 2 members"],
                 lambda data, out: patchddm_train.train(data, out, TINY.patchddm, quiet=True)),
    "inr": (inr_train, inr.SHIPPED, dict(kind="dhcp", subjects=8, shape=16, seed=7, rescanned=0.8), {"fit_steps": 2},
            ["PSNR gain over copy input"], lambda data, out: inr_train.train(data, out, TINY.inr, quiet=True)),
}


def _toy_card(method: str, name: str, training: dict, evaluation: dict, options: dict, metrics: list) -> dict:
    return {"name": name, "method": method, "summary": f"a toy {method} model", "intended_use": "tests only.",
            "training": {"command": "brainkernels ...", "cohort": training, "wall_time": "1 s", "hardware": "a CPU"},
            "evaluation": {"cohort": {**evaluation, "seed": evaluation["seed"] + 100}, **options},
            "metrics": {metric: {"value": 0.0, "tolerance": 1.0} for metric in metrics}}


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory):
    """A tiny run of each method exported as its shipped model, in folders the config classes point to."""
    root = tmp_path_factory.mktemp("toy-models")
    with pytest.MonkeyPatch.context() as patch:
        for method, (module, name, cohort, options, metrics, train) in TOYS.items():
            data = root / "data" / method
            write_cohort(cohort["kind"], data, **{key: value for key, value in cohort.items() if key != "kind"})
            models = root / method
            shipped.export(train(data, root / "runs" / method), models / name, method=module.METHOD,
                           method_files=module.RUN_FILES)
            (models / name / shipped.CARD).write_text(tomli_w.dumps(_toy_card(method, name, cohort, cohort, options,
                                                                              metrics)))
            config_class = {"ppr": PPRConfig, "patchddm": PatchDDMConfig, "inr": INRConfig}[method]
            patch.setattr(config_class, "MODELS", models)
        yield root


@pytest.fixture(scope="module")
def demo(tmp_path_factory, toy_models):
    out = tmp_path_factory.mktemp("demo")
    return out, run.run_demo(out, TINY, device="cpu", quiet=True)


def test_report_holds_every_section_figure_and_the_memory_table(demo):
    out, report = demo
    html = unescape(report.read_text())
    markdown = (out / "report.md").read_text()
    for title in SECTIONS:
        assert title in html and f"## {title}" in markdown
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    # Shipped models: PPR ROC + two maps; PatchDDM curve, segmentation, uncertainty; INR sequence, HC. Trained
    # from scratch: the same and a loss curve each. The memory chart.
    assert len(links) == (3 + 3 + 2) + (4 + 4 + 3) + 1
    for link in links:
        assert (out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == len(links) and all(base64.b64decode(image)[:4] == b"\x89PNG" for image in images)
    assert "src=\"http" not in html and "file:" not in html  # self-contained
    for row in ("AUROC", "Dice (mean ± std)", "PSNR dB", "MONAI DiffusionModelUNet", "FullRes training step, 256^3"):
        assert row in markdown
    assert "| PatchDDM training |" in markdown and "| total |" in markdown


def test_no_report_or_table_prints_nan(demo):
    """Metrics the tiny cohorts cannot support (an HC correlation from too few babies, an AUROC
    without positives) say why in words."""
    out, report = demo
    html = re.sub(r'src="data:image/png;base64,[^"]+"', "", report.read_text())
    for name, text in [("report.html", html), ("report.md", (out / "report.md").read_text()),
                       *((str(path), path.read_text()) for path in out.rglob("*.csv"))]:
        assert not re.search(r"\bnan\b", text, re.IGNORECASE), name


def test_memory_table_agrees_with_the_patchddm_budgets(demo):
    out, _ = demo
    rows = [line.split(" | ") for line in (out / "report.md").read_text().splitlines()
            if line.startswith("| PatchDDM | sampling step, 256^3 | brainkernels")]
    assert len(rows) == 1 and float(rows[0][3]) <= 6.0


def test_existing_output_needs_overwrite(demo):
    out, _ = demo
    with pytest.raises(BrainkernelsError, match="not empty; give a new folder or --overwrite"):
        run.run_demo(out, TINY, device="cpu", quiet=True)


def test_a_failing_method_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def broken(*_):
        raise BrainkernelsError("cohort unreadable")

    calls = []
    monkeypatch.setattr(run, "METHODS", {"PPR": broken, "INR": lambda *_: calls.append("INR") or [Section("INR")]})
    monkeypatch.setattr(memory, "measure", lambda stages: {"PPR": [Footprint("case", "ours", 10**9, 2 * 10**9),
                                                                   Footprint("case", "peer", 3 * 10**9)]})
    (tmp_path / "report.md").write_text("an earlier demo's report")
    with pytest.raises(BrainkernelsError, match=r"failures \(PPR: cohort unreadable\)"):
        run.run_demo(tmp_path, TINY, device="cpu", overwrite=True, quiet=True)
    markdown = (tmp_path / "report.md").read_text()
    assert calls == ["INR"] and "## PPR: failed" in markdown and "cohort unreadable" in markdown
    # One line per failed method; the traceback only with --debug.
    assert capsys.readouterr().err == "brainkernels demo: PPR failed: cohort unreadable\n"
    assert "| PPR | case | peer | 3.00 | 3.0x |  |" in markdown


def test_report_renderers_escape_and_quote_commands(tmp_path):
    section = Section("A <title>")
    section.text("run `brainkernels demo` & wait")
    section.table(("a|b", "c"), [("1", "x|y")])
    html = to_html("T", [section])
    assert "A &lt;title&gt;" in html and "<code>brainkernels demo</code> &amp; wait" in html
    assert "| 1 | x\\|y |" in to_markdown("T", [section], tmp_path)


def test_quick_level_is_smaller_than_the_default():
    for name in ("ppr", "patchddm", "inr"):
        assert getattr(QUICK, name).steps < getattr(DEFAULT, name).steps


def test_cli_help_names_the_levels():
    result = subprocess.run([sys.executable, "-m", "brainkernels", "demo", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--quick" in result.stdout and "report.html" in result.stdout

"""The dashboard spec: every panel key is a name the project logs (checked against a real tiny run)."""

from __future__ import annotations

import csv
import json
import os

from tests.callbacks.test_surgery_probe import _probe, clip_file  # noqa: F401 - the fixture
from tests.helpers.modules import tiny_datamodule
from tests.helpers.trainers import csv_logger, quiet_trainer
from xai_lightning import names
from xai_lightning.callbacks import ConceptAlarm, ConceptProbe, CounterfactualCheck, EpochTimer
from xai_lightning.dashboard import build_workspace, main, spec_keys, workspace_spec
from xai_lightning.models import ClassifierModule


def test_dry_run_spec_keys_are_logged_by_a_real_run(tmp_path, clip_file):  # noqa: F811
    verdict = ConceptProbe(concepts={"shape": "digit", "color": "color"}, draws=20, permutations=20)
    callbacks = [verdict, _probe(clip_file), CounterfactualCheck(), EpochTimer(), ConceptAlarm(spurious=["color"])]
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0, callbacks=callbacks, logger=csv_logger(tmp_path)
    )
    dm = tiny_datamodule(str(tmp_path / "data"), val_splits=["val", "real_world", "probe_set"])
    trainer.fit(ClassifierModule(num_classes=2, backbone="resnet18"), dm)
    logged = set()
    for row in csv.DictReader(open(os.path.join(str(tmp_path), "csv", "version_0", "metrics.csv"))):
        logged |= {k for k, v in row.items() if v not in ("", None)}
    main(["--entity", "me", "--project", "p", "--group", "story-1", "--dry-run", str(tmp_path / "spec.json")])
    spec = json.load(open(tmp_path / "spec.json"))
    assert [s["name"] for s in spec["sections"]] == [
        "Verdict",
        "Does it generalize?",
        "Surgery: what the features carry",
        "Cost",
    ]
    assert spec["groupby"] == "JobType" and spec["group"] == "story-1"
    assert spec["group_colors"] == {"biased": "#d62728", "debiased": "#1f77b4"}
    keys = spec_keys(spec)
    alarms = {k for k in keys if k.startswith("alarm/")}  # logged only when the alarm fires
    assert alarms == {"alarm/shape", "alarm/color"} and all(names.known(k) for k in alarms)
    scenes_only = {"cf/background_flip_rate"}  # logged by runs on SceneDigitsDataModule
    assert scenes_only <= keys
    assert sorted(keys - alarms - scenes_only - logged) == []
    workspace = build_workspace(spec, "me", "p")  # the W&B objects build without network
    assert [s.name for s in workspace.sections] == [s["name"] for s in spec["sections"]]


def test_names_know_every_documented_pattern_and_nothing_else():
    assert names.known("surgery/effect_separation_vs_init_lo/color") and names.known("surgery/match/score_mean/a.b")
    assert names.known("probe/relies/color") and names.known("probe/undecided/too_few_images")
    assert not names.known("probe/efect/color") and not names.known("val/accuracy")
    assert not names.known("probe/effect_separation_vs_init/color")  # the surgery's effects are not the verdict's
    assert spec_keys(workspace_spec(concepts=["background"])) >= {"probe/effect/background", "alarm/background"}


def test_the_metrics_page_lists_every_logged_name():
    page = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "metrics.md")).read()
    missing = [p for p in names.ALL_PATTERNS if f"`{p}`" not in page]
    assert missing == []

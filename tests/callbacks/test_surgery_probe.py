"""SurgeryProbe on a tiny CNN and a tiny random open_clip CLIP: keys, DDP equality, no extra math, hooks."""

from __future__ import annotations

import csv
import math
import os

import lightning as L
import pytest
import torch

from tests.helpers.modules import TinyClassifier, tiny_datamodule
from tests.helpers.tiny import TINY_CLIP_CFG, tiny_clip
from xai_lightning.callbacks import SurgeryProbe
from xai_lightning.callbacks.surgery_probe import holdout_mask
from xai_lightning.clip import save_probe_clip
from xai_lightning.surgery import (
    DEFAULT_CONCEPTS,
    SurgeryPipeline,
    count_forward_hooks,
    random_init_copy,
    resolve_concepts,
)

CONTRACT = [
    "share",
    "share_clip",
    "share_surgery",
    "null_share",
    "effect",
    "effect_lo",
    "effect_hi",
    "correct",
    "wrong",
    "zeroshot_acc",
    "retention",
]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")
    save_probe_clip(path, tiny_clip(seed=1), TINY_CLIP_CFG, half=False)
    return path


def _probe(clip_file: str, **kw) -> SurgeryProbe:
    args = dict(
        clip={"checkpoint": clip_file},
        standalone_layers="convs",
        clip_layers="stages",
        null_draws=3,
        bootstrap=200,
        max_score_samples=48,
    )
    args.update(kw)
    return SurgeryProbe(**args)


def _trainer(tmp_path, callbacks, **kw) -> L.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(str(tmp_path), name="csv"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
        num_sanity_val_steps=0,
    )
    args.update(kw)
    return L.Trainer(**args)


def _csv_metrics(tmp_path) -> dict[str, float]:
    path = os.path.join(str(tmp_path), "csv", "version_0", "metrics.csv")
    out: dict[str, float] = {}
    for row in csv.DictReader(open(path)):
        out.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


def test_logs_every_contract_key_finite(tmp_path, clip_file):
    torch.manual_seed(0)
    probe = _probe(clip_file)
    trainer = _trainer(tmp_path, [probe], max_epochs=1, limit_train_batches=2)
    trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    logged = _csv_metrics(tmp_path)
    keys = [f"probe/{m}/{c}" for m in CONTRACT for c in ("shape", "color")]
    keys += [
        "probe/delta/shape_5",
        "probe/delta/shape_8",
        "probe/delta/color_red",
        "probe/delta/color_green",
        "probe/match/coverage",
        "probe/seconds",
    ] + [f"probe/match/score_mean/visual.layer{i}" for i in range(1, 5)]
    missing = [k for k in keys if k not in logged]
    assert not missing
    assert all(math.isfinite(logged[k]) for k in keys)
    held_out = int(holdout_mask(torch.arange(48), fit=False).sum())
    assert 12 <= held_out <= 36 and logged["probe/images"] == held_out  # the held-out half of 48 probe images
    # shares of the two concepts partition the images; effect interval brackets the effect
    assert logged["probe/share/shape"] + logged["probe/share/color"] == pytest.approx(1.0)
    for c in ("shape", "color"):
        assert logged[f"probe/effect_lo/{c}"] <= logged[f"probe/effect/{c}"] <= logged[f"probe/effect_hi/{c}"]
    files = os.listdir(os.path.join(str(tmp_path), "csv", "version_0", "probe"))
    assert {"plan_epoch000.pt", "table_epoch000.csv", "match_scores_epoch000.png"} <= set(files)


def _direct(model, dm, seed: int = 0):
    """SurgeryPipeline run by hand on the probe set: fit on one half, score the other (no baseline)."""
    pipe = SurgeryPipeline(
        model,
        tiny_clip(seed=1),
        resolve_concepts(DEFAULT_CONCEPTS, dm.attributes),
        "convs",
        "stages",
        null_draws=3,
        seed=seed,
    )
    outcomes, indices = [], []
    with torch.no_grad():
        for batch in dm.dataloader("probe_set"):  # fit on one half of the probe set ...
            fit = holdout_mask(batch["index"], fit=True)
            pipe.fit_batch(batch["image"][fit])
        pipe.fit_finish()
        for batch in dm.dataloader("probe_set"):  # ... score the other half
            held = holdout_mask(batch["index"], fit=False) & (batch["index"] < 2 * 48)
            targets = torch.stack([batch["label"], batch["color"]])[:, held]
            outcomes.append(pipe.score_batch(batch["image"][held], targets))
            indices.append(batch["index"][held])
    return pipe, torch.cat(outcomes, dim=-1), torch.cat(indices)


def test_callback_adds_no_math_of_its_own(tmp_path, clip_file):
    """The logged numbers equal SurgeryPipeline run directly on the same data; the random-init baseline equals
    a second pipeline run by hand on a random-init copy, paired image by image."""
    torch.manual_seed(0)
    model, dm = TinyClassifier().eval(), tiny_datamodule(str(tmp_path / "data"))
    probe = _probe(clip_file)
    assert probe.verdict == "separation_vs_init" and probe.baseline == "random_init"  # the defaults
    trainer = _trainer(tmp_path, [probe])
    trainer.validate(model, dm)
    logged = _csv_metrics(tmp_path)
    pipe, trained, idx = _direct(model, dm)
    summary = pipe.score_finish(verdict="retention", bootstrap=200)
    assert torch.equal(pipe.moments.scores(), probe.pipe.moments.scores())
    for k, v in summary.metrics.items():
        if k.startswith(("effect/", "effect_lo/", "effect_hi/", "margin")):
            continue  # those follow the verdict (vs init here), checked below
        assert logged[f"probe/{k}"] == pytest.approx(v, abs=1e-6), k
    init_pipe, init, idx2 = _direct(random_init_copy(model, seed=0), dm)
    assert torch.equal(idx, idx2)
    init_summary = init_pipe.score_finish(verdict="retention", bootstrap=200)
    for c_i, c in enumerate(("shape", "color")):
        assert logged[f"probe/init_retention/{c}"] == pytest.approx(init_summary.metrics[f"retention/{c}"], abs=1e-6)
        for m_i, metric in enumerate(("share", "retention")):
            a, b = trained[m_i, c_i], init[m_i, c_i]
            both = (a >= 0) & (b >= 0)
            expected = float((a[both] - b[both]).double().mean())
            assert logged[f"probe/effect_{metric}_vs_init/{c}"] == pytest.approx(expected, abs=1e-6), (metric, c)
        a, b = trained[2, c_i], init[2, c_i]  # separation, in units of plain CLIP's mean |separation|
        both = ~(a.isnan() | b.isnan())
        unit = summary.metrics[f"separation_clip/{c}"]
        expected = float((a[both] - b[both]).mean()) / unit
        assert logged[f"probe/effect_separation_vs_init/{c}"] == pytest.approx(expected, abs=1e-5), c
        assert logged[f"probe/effect/{c}"] == logged[f"probe/effect_separation_vs_init/{c}"]
    assert logged["probe/baseline_seconds"] > 0


def test_baseline_is_computed_once_per_run(tmp_path, clip_file):
    probe = _probe(clip_file)
    trainer = _trainer(tmp_path, [probe], max_epochs=2, limit_train_batches=1)
    trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert [h["epoch"] for h in probe.history] == [0, 1]
    assert "probe/baseline_seconds" in probe.history[0] and "probe/baseline_seconds" not in probe.history[1]
    for c in ("shape", "color"):  # the reference does not train: the same value at every epoch
        assert probe.history[0][f"probe/init_retention/{c}"] == probe.history[1][f"probe/init_retention/{c}"]
    none = _probe(clip_file, verdict="retention", baseline="none")
    _trainer(tmp_path / "none", [none]).validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert none.pipe.baseline is None and not any("vs_init" in k for k in none.history[0])


def test_no_hooks_left_after_exception_mid_validation(tmp_path, clip_file):
    model = TinyClassifier(fail_on_probe_batch=1)
    probe = _probe(clip_file)
    trainer = _trainer(tmp_path, [probe])
    base = count_forward_hooks(model)
    with pytest.raises(RuntimeError, match="boom in validation"):
        trainer.validate(model, tiny_datamodule(str(tmp_path / "data")))
    assert count_forward_hooks(model) == base
    assert count_forward_hooks(probe.pipe.clip.model) == 0


def test_probe_never_alters_training(tmp_path, clip_file):
    def run(with_probe: bool, sub: str):
        L.seed_everything(7)
        dm = tiny_datamodule(str(tmp_path / "data"), train_per_class=40)
        model = TinyClassifier()
        callbacks = [_probe(clip_file)] if with_probe else []
        trainer = _trainer(tmp_path / sub, callbacks, max_epochs=2)
        trainer.fit(model, dm)
        return model, trainer.callback_metrics

    m1, metrics1 = run(True, "with")
    m2, metrics2 = run(False, "without")
    for (n, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(p1, p2), n
    assert float(metrics1["val/acc/dataloader_idx_0"]) == float(metrics2["val/acc/dataloader_idx_0"])


def test_holdout_halves_are_disjoint_balanced_and_shard_evenly():
    index = torch.arange(10_000)
    fit, held = holdout_mask(index, True), holdout_mask(index, False)
    assert not bool((fit & held).any()) and bool((fit | held).all())
    assert abs(float(fit.float().mean()) - 0.5) < 0.02
    for world in (2, 3, 4, 8):  # DistributedSampler(shuffle=False): rank r gets indices r, r + W, ...
        for rank in range(world):
            assert abs(float(fit[rank::world].float().mean()) - 0.5) < 0.05


def test_bad_arguments_name_the_allowed_values(tmp_path, clip_file):
    with pytest.raises(ValueError, match="allowed: share, retention, share_vs_init, retention_vs_init"):
        SurgeryProbe(verdict="vibes")
    with pytest.raises(ValueError, match="allowed: random_init, none"):
        SurgeryProbe(baseline="trained")
    with pytest.raises(ValueError, match="set baseline='random_init'"):
        SurgeryProbe(baseline="none")
    with pytest.raises(ValueError, match="allowed: argmax, one_to_one"):
        SurgeryProbe(matching="hungarian")
    with pytest.raises(ValueError, match="swap_fraction"):
        SurgeryProbe(swap_fraction=0)
    with pytest.raises(ValueError, match="unknown clip keys"):
        SurgeryProbe(clip={"modle": "RN50"})
    dm = tiny_datamodule(str(tmp_path / "data"))
    bad_split = _probe(clip_file, fit_split="holdout")
    with pytest.raises(ValueError, match="available: val, real_world, probe_set"):
        _trainer(tmp_path, [bad_split]).validate(TinyClassifier(), dm)
    bad_attr = _probe(clip_file, concepts={"texture": {"attribute": "texture", "template": "a {} digit"}})
    with pytest.raises(ValueError, match="available: digit, color"):
        _trainer(tmp_path, [bad_attr]).validate(TinyClassifier(), dm)
    missing = _probe(clip_file, concepts={"color": {"attribute": "color", "captions": {"red": "a red digit"}}})
    with pytest.raises(ValueError, match=r"missing \['green'\]"):
        _trainer(tmp_path, [missing]).validate(TinyClassifier(), dm)


def test_wandb_offline_run_holds_metrics_table_plot_and_plan(tmp_path, clip_file, monkeypatch):
    import glob

    from xai_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), group="g", job_type="biased")
    trainer = _trainer(
        tmp_path, [_probe(clip_file)], logger=[L.pytorch.loggers.CSVLogger(str(tmp_path), name="csv"), wandb_logger]
    )
    trainer.validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    run_dir = wandb_logger.experiment.dir
    wandb_logger.experiment.finish()
    assert glob.glob(os.path.join(run_dir, "media", "table", "probe", "table_*.table.json"))
    assert glob.glob(os.path.join(run_dir, "media", "images", "probe", "match_scores_*.png"))
    assert os.path.isfile(os.path.join(run_dir, "probe", "plan_epoch000.pt"))
    log = glob.glob(os.path.join(os.path.dirname(run_dir), "*.wandb"))[0]
    assert b"probe/effect/color" in open(log, "rb").read()  # the metrics are in the run's log


def test_sanity_check_is_skipped(tmp_path, clip_file):
    probe = _probe(clip_file)
    trainer = _trainer(tmp_path, [probe], max_epochs=1, limit_train_batches=1, num_sanity_val_steps=2)
    trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert [h["epoch"] for h in probe.history] == [0]  # one probed epoch, none for the sanity check
    assert probe.pipe.moments.count == int(holdout_mask(torch.arange(48), fit=True).sum())  # no sanity batches

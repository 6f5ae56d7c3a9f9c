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
from tests.helpers.trainers import csv_logger, quiet_trainer
from xai_lightning import names
from xai_lightning.callbacks import SurgeryProbe
from xai_lightning.clip import save_probe_clip
from xai_lightning.surgery import (
    DEFAULT_CONCEPTS,
    SurgeryPipeline,
    count_forward_hooks,
    resolve_concepts,
)
from xai_lightning.surgery.holdout import holdout_mask


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
    return quiet_trainer(**{"logger": csv_logger(tmp_path), "callbacks": callbacks, "num_sanity_val_steps": 0, **kw})


def _csv_metrics(tmp_path) -> dict[str, float]:
    path = os.path.join(str(tmp_path), "csv", "version_0", "metrics.csv")
    out: dict[str, float] = {}
    for row in csv.DictReader(open(path)):
        out.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return out


def test_logs_exactly_the_documented_keys_finite(tmp_path, clip_file):
    """Every probe key logged is in the one list of names (xai_lightning.names), and every listed key is
    logged; values are finite (the tiny CLIP's near-ties aside, nothing is NaN)."""
    torch.manual_seed(0)
    probe = _probe(clip_file)
    trainer = _trainer(tmp_path, [probe], max_epochs=1, limit_train_batches=2)
    trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    logged = {k: v for k, v in _csv_metrics(tmp_path).items() if k.startswith("surgery/")}
    expected = names.surgery_keys(
        ["shape", "color"],
        ["shape_5", "shape_8", "color_red", "color_green"],
        [f"visual.layer{i}" for i in range(1, 5)],
        ["share", "retention", "share_vs_init", "retention_vs_init", "separation_vs_init"],
    )
    assert sorted(set(logged) - set(expected) - set(names.SURGERY_ONCE)) == []
    assert sorted(set(expected) - set(logged)) == []
    assert all(math.isfinite(v) for v in logged.values())
    held_out = int(holdout_mask(torch.arange(48), fit=False).sum())
    assert 12 <= held_out <= 36 and logged["surgery/images"] == held_out  # the held-out half of 48 probe images
    assert not [k for k in _csv_metrics(tmp_path) if k.startswith("probe/")]  # the surgery decides no verdict
    files = os.listdir(os.path.join(str(tmp_path), "csv", "version_0", "surgery"))
    assert {"plan_epoch000.pt", "table_epoch000.csv", "match_scores_epoch000.png"} <= set(files)


def _direct(model, dm, references: list | None = None):
    """SurgeryPipeline run by hand on the probe set: fit on one half, score the other."""
    pipe = SurgeryPipeline(
        model, tiny_clip(seed=1), resolve_concepts(DEFAULT_CONCEPTS, dm.attributes), "convs", "stages", null_draws=3
    )

    def fit_images():
        for batch in dm.dataloader("probe_set"):
            yield batch["image"][holdout_mask(batch["index"], fit=True)]

    def scored():
        for batch in dm.dataloader("probe_set"):
            held = holdout_mask(batch["index"], fit=False) & (batch["index"] < 2 * 48)
            targets = torch.stack([batch["digit_index"], batch["color"]])[:, held]
            yield batch["image"][held], targets, batch["index"][held]

    with torch.no_grad():
        for images in fit_images():
            pipe.fit_batch(images)
        pipe.fit_finish()
        if references:
            pipe.compute_references(references, fit_images, scored())
        for images, targets, index in scored():
            pipe.score_batch(images, targets, index=index)
    return pipe


def test_callback_adds_no_math_of_its_own(tmp_path, clip_file):
    """Every logged probe number equals SurgeryPipeline run by hand on the same data, references included
    (under validate: the architecture rebuilt by its constructor under the probe's seeds)."""
    from xai_lightning.surgery import reference_models

    torch.manual_seed(0)
    model, dm = TinyClassifier().eval(), tiny_datamodule(str(tmp_path / "data"))
    probe = _probe(clip_file)
    assert (probe.reference, probe.reference_reinits) == ("start", 3)  # the defaults
    trainer = _trainer(tmp_path, [probe])
    trainer.validate(model, dm)
    logged = _csv_metrics(tmp_path)
    assert "no fit start" in probe.reference_info and "10000, 10001, 10002" in probe.reference_info
    dm.setup()
    pipe = _direct(model, dm, reference_models(TinyClassifier, [10_000, 10_001, 10_002]))
    summary = pipe.score_finish(bootstrap=200)
    assert torch.equal(pipe.plan.matching.source, probe.pipe.plan.matching.source)
    assert torch.equal(pipe.plan.matching.score, probe.pipe.plan.matching.score)
    for k, v in summary.metrics.items():
        assert logged[f"surgery/{k}"] == pytest.approx(v, abs=1e-6, nan_ok=True), k
    assert logged["surgery/reference_seconds"] > 0


def test_references_are_computed_once_and_travel_in_the_checkpoint(tmp_path, clip_file):
    probe = _probe(clip_file)
    trainer = _trainer(tmp_path, [probe], max_epochs=2, limit_train_batches=1)
    trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert [h["epoch"] for h in probe.history] == [0, 1]
    assert "surgery/reference_seconds" in probe.history[0] and "surgery/reference_seconds" not in probe.history[1]
    assert "weights at fit start + 3 re-initialisations" in probe.reference_info
    for c in ("shape", "color"):  # the references do not train: the same value at every epoch
        assert probe.history[0][f"surgery/init_retention/{c}"] == probe.history[1][f"surgery/init_retention/{c}"]
    state = probe.state_dict()  # what a checkpoint keeps
    assert "start" not in state and state["reference"]["outcomes"]["table"].shape[0] == 4
    resumed = _probe(clip_file)
    resumed.load_state_dict(state)
    _trainer(tmp_path / "resumed", [resumed], max_epochs=1, limit_train_batches=1).fit(
        TinyClassifier(), tiny_datamodule(str(tmp_path / "data"))
    )
    assert len(resumed.history) == 3 and "surgery/reference_seconds" not in resumed.history[-1]  # not recomputed
    assert torch.equal(resumed.pipe.reference.table.nan_to_num(7.0), probe.pipe.reference.table.nan_to_num(7.0))
    none = _probe(clip_file, reference="none")
    _trainer(tmp_path / "none", [none]).validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert none.pipe.reference is None and not any("vs_init" in k for k in none.history[0])


def test_the_start_snapshot_is_the_weights_at_fit_start_and_waits_in_checkpoints(tmp_path, clip_file):
    """Before the first probed epoch the snapshot is what a checkpoint carries (a resume must not take its
    restored weights for the start)."""
    torch.manual_seed(3)
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = _probe(clip_file, every_n_epochs=5)  # never probed in 1 epoch: the snapshot stays pending
    _trainer(tmp_path, [probe], max_epochs=1, limit_train_batches=2).fit(model, tiny_datamodule(str(tmp_path / "data")))
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # it trained
    state = probe.state_dict()
    assert state["start"].keys() == before.keys()
    assert all(torch.equal(state["start"][k], v) for k, v in before.items())
    restored = _probe(clip_file)
    restored.load_state_dict(state)
    restored.on_fit_start(None, model)  # a resumed fit: the saved start wins over the restored weights
    assert all(torch.equal(restored._start_state[k], v) for k, v in before.items())


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


def test_callback_order_does_not_change_what_the_probe_sees(tmp_path, clip_file):
    """CounterfactualCheck runs the model again on edited images in on_validation_batch_end; whichever runs
    first, the probe fits on the validation forward's own maps."""
    from xai_lightning.callbacks import CounterfactualCheck

    z = {}
    for order in ("probe_first", "counterfactual_first"):
        torch.manual_seed(0)
        probe = _probe(clip_file, reference="none")
        callbacks = [probe, CounterfactualCheck()] if order == "probe_first" else [CounterfactualCheck(), probe]
        _trainer(tmp_path / order, callbacks).validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
        z[order] = (probe.pipe.plan.matching.source, probe.pipe.plan.matching.score)
    assert all(torch.equal(a, b) for a, b in zip(z["probe_first"], z["counterfactual_first"]))


def test_limited_validation_fits_the_model_and_its_references_on_the_same_images(tmp_path, clip_file, monkeypatch):
    fitted = []
    original = SurgeryPipeline._reference_plan

    def spy(self, *args, **kwargs):
        model, plan = original(self, *args, **kwargs)
        fitted.append(plan.extras["images"])
        return model, plan

    monkeypatch.setattr(SurgeryPipeline, "_reference_plan", spy)
    probe = _probe(clip_file)
    _trainer(tmp_path, [probe], limit_val_batches=2).validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    dm = tiny_datamodule(str(tmp_path / "data"))
    dm.setup()
    first_two = torch.cat([b["index"] for _, b in zip(range(2), dm.dataloader("probe_set"))])
    assert probe.pipe.plan.extras["images"] == int(holdout_mask(first_two, fit=True).sum()) < 24
    assert fitted == [probe.pipe.plan.extras["images"]] * 3  # under validate: 3 re-initialisations, no start


def test_holdout_halves_are_disjoint_balanced_and_shard_evenly():
    index = torch.arange(10_000)
    fit, held = holdout_mask(index, True), holdout_mask(index, False)
    assert not bool((fit & held).any()) and bool((fit | held).all())
    assert abs(float(fit.float().mean()) - 0.5) < 0.02
    for world in (2, 3, 4, 8):  # DistributedSampler(shuffle=False): rank r gets indices r, r + W, ...
        for rank in range(world):
            assert abs(float(fit[rank::world].float().mean()) - 0.5) < 0.05


def test_bad_arguments_name_the_allowed_values(tmp_path, clip_file):
    with pytest.raises(ValueError, match="allowed: start, none"):
        SurgeryProbe(reference="trained")
    with pytest.raises(ValueError, match="reference_reinits=-1 must be >= 0"):
        SurgeryProbe(reference_reinits=-1)
    with pytest.raises(ValueError, match="'none' is reserved"):
        resolve_concepts({"none": {"attribute": "digit", "template": "{}"}}, {"digit": ["5"]})
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

    from tests.helpers.wandb_records import wait_for_records
    from xai_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), group="g", job_type="biased")
    trainer = _trainer(tmp_path, [_probe(clip_file)], logger=[csv_logger(tmp_path), wandb_logger])
    trainer.validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    run_dir = wandb_logger.experiment.dir
    wandb_logger.experiment.finish()
    assert glob.glob(os.path.join(run_dir, "media", "table", "surgery", "table_*.table.json"))
    assert glob.glob(os.path.join(run_dir, "media", "images", "surgery", "match_scores_*.png"))
    assert os.path.isfile(os.path.join(run_dir, "surgery", "plan_epoch000.pt"))
    # the service may write the last records just after finish() returns: wait for them (up to 30 s)
    log = wait_for_records(
        glob.glob(os.path.join(os.path.dirname(run_dir), "*.wandb"))[0],
        lambda data: b"surgery/effect_share/color" in data,
    )
    assert b"surgery/effect_share/color" in log  # the metrics are in the run's log


def test_values_reduced_over_ranks_draw_no_sync_dist_recommendation(tmp_path, clip_file, monkeypatch):
    """Under DDP Lightning recommends sync_dist=True for each epoch-level value logged without it (one warning
    per value and epoch). The probe's and the counterfactual check's values are already reduced, so they draw
    none; a value that is not reduced still does. Lightning's own check runs here, told that a process group
    is up."""
    import warnings

    from lightning.pytorch.trainer.connectors.logger_connector import result
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    from xai_lightning.callbacks import CounterfactualCheck

    class Unreduced(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            pl_module.log("mine/unreduced", 1.0, sync_dist=False)

    monkeypatch.setattr(result, "_distributed_is_initialized", lambda: True)
    trainer = _trainer(tmp_path, [_probe(clip_file), CounterfactualCheck(), Unreduced()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.validate(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    recommended = [str(w.message) for w in caught if issubclass(w.category, PossibleUserWarning)]
    recommended = [m for m in recommended if "sync_dist=True" in m]
    assert any("'mine/unreduced'" in m for m in recommended)  # Lightning's check did run
    assert not [m for m in recommended if "'probe/" in m or "'cf/" in m or "'surgery/" in m]
    assert {"surgery/images", "cf/shape_flip_rate"} <= trainer.callback_metrics.keys()


def test_sanity_check_is_skipped(tmp_path, clip_file):
    probe = _probe(clip_file)
    trainer = _trainer(tmp_path, [probe], max_epochs=1, limit_train_batches=1, num_sanity_val_steps=2)
    trainer.fit(TinyClassifier(), tiny_datamodule(str(tmp_path / "data")))
    assert [h["epoch"] for h in probe.history] == [0]  # one probed epoch, none for the sanity check
    assert probe.pipe.moments.count == int(holdout_mask(torch.arange(48), fit=True).sum())  # no sanity batches

"""The training loop on real COCO photos with tiny-random: outputs, resume, interruption and divergence."""

import json

import pytest
import torch

import negclip.train as train_module
from negclip.config import TrainConfig
from conftest import write_negation_file
from negclip.train import CHECKPOINT_FILE, TrainingDivergedError, batch_order, cosine_schedule, train


@pytest.fixture()
def negation_file(photo_paths, tmp_path):
    return write_negation_file(photo_paths[:12], "a photo with a {present} number {index}", tmp_path / "negations.jsonl")


def _config(negation_file, tmp_path, **overrides):
    values = dict(
        data=str(negation_file), model="tiny-random", output_dir=str(tmp_path / "run"), batch_size=4, max_steps=4,
        learning_rate=1e-3, warmup_steps=1, eval_fraction=0.25, save_every=2, log_every=1, device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_train_writes_adapter_config_metrics(negation_file, tmp_path):
    records = []
    result = train(_config(negation_file, tmp_path), on_step=lambda step, total, record: records.append(record))

    run = tmp_path / "run"
    assert result.steps == 4
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(record["loss"])) for record in records)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4
    assert metrics["eval_examples"] == 3  # 25 % of 12 images, one example each
    assert metrics["before"]["presence"]["count"] == 3
    assert json.loads((run / "train_config.json").read_text())["layers"] == "front"
    card = (run / "adapter" / "README.md").read_text()
    assert "tiny-random" in card
    assert "| tuned text layers | front = [0, 1] |" in card
    assert "presence accuracy" in card
    assert max(record["logit_scale"] for record in records) <= 100.0 + 1e-4
    guard = metrics["zeroshot_guard"]
    assert guard["max_drop_points"] == 5.0
    assert set(guard["drop_points"]) == {"mean_average_precision", "top1_hit_rate"}
    assert "zero-shot mAP" in card


def test_train_zeroshot_guard_warns(negation_file, tmp_path, monkeypatch):
    import negclip.benchmarks.zeroshot as zeroshot

    real_evaluate = zeroshot.evaluate_zeroshot
    scores = iter([1.0, 0.5])  # base, then tuned: a 50-point drop in mean average precision

    def evaluate_with_drop(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        result["mean_average_precision"] = next(scores)
        return result

    monkeypatch.setattr(zeroshot, "evaluate_zeroshot", evaluate_with_drop)
    result = train(_config(negation_file, tmp_path, max_steps=1))

    assert len(result.warnings) == 1
    assert "mean average precision" in result.warnings[0]
    assert "**Warning:**" in (result.adapter_dir / "README.md").read_text()


def test_train_lora_mode(negation_file, tmp_path):
    result = train(_config(negation_file, tmp_path, mode="lora", max_steps=2))
    assert (result.adapter_dir / "adapter_config.json").is_file()
    info = json.loads((result.adapter_dir / "negclip_adapter.json").read_text())
    assert info["mode"] == "lora"
    assert info["layers"] == [0, 1]


def test_train_resume_continues(negation_file, tmp_path):
    train(_config(negation_file, tmp_path, max_steps=2))
    steps_seen = []
    result = train(
        _config(negation_file, tmp_path, max_steps=4),
        on_step=lambda step, total, record: steps_seen.append(step),
        resume=True,
    )
    assert steps_seen == [3, 4]
    assert result.steps == 4


def test_train_resume_without_checkpoint(negation_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_config(negation_file, tmp_path), resume=True)


def test_train_nan_keeps_last_good_checkpoint(negation_file, tmp_path, monkeypatch):
    real_step_losses = train_module.step_losses
    calls = []

    def diverging(*args, **kwargs):
        losses = real_step_losses(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(train_module, "step_losses", diverging)
    with pytest.raises(TrainingDivergedError, match="step 3"):
        train(_config(negation_file, tmp_path))
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["step"] == 2
    assert not (tmp_path / "run" / "adapter").exists()


def test_train_interrupt_saves_then_resumes(negation_file, tmp_path, monkeypatch):
    real_step_losses = train_module.step_losses
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_step_losses(*args, **kwargs)

    monkeypatch.setattr(train_module, "step_losses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_config(negation_file, tmp_path, save_every=100))
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["step"] == 1

    monkeypatch.setattr(train_module, "step_losses", real_step_losses)
    result = train(_config(negation_file, tmp_path), resume=True)
    assert result.steps == 4


def test_train_should_stop(negation_file, tmp_path):
    result = train(_config(negation_file, tmp_path, max_steps=10), should_stop=lambda: True)
    assert result.steps == 1
    assert result.stopped_early
    assert "stopped early" in (result.adapter_dir / "README.md").read_text()


def test_train_rejects_bad_settings(negation_file, tmp_path):
    with pytest.raises(ValueError, match="mode must be"):
        train(_config(negation_file, tmp_path, mode="half"))
    with pytest.raises(ValueError, match="names layers 4, 5, 6, 7, 8"):
        train(_config(negation_file, tmp_path, layers="0-9"))


def test_batch_order_deterministic_and_full():
    first = batch_order(10, 4, seed=1, epoch=0, stream=0)
    assert first == batch_order(10, 4, seed=1, epoch=0, stream=0)
    assert first != batch_order(10, 4, seed=1, epoch=1, stream=0)
    assert [len(batch) for batch in first] == [4, 4]
    assert len({index for batch in first for index in batch}) == 8


def test_cosine_schedule_shape():
    factor = cosine_schedule(warmup_steps=2, total_steps=10)
    assert factor(0) == pytest.approx(0.5)
    assert factor(1) == pytest.approx(1.0)
    assert factor(2) == pytest.approx(1.0)
    assert factor(6) == pytest.approx(0.5)
    assert factor(10) == pytest.approx(0.0)


def test_train_resume_with_other_layers(negation_file, tmp_path):
    train(_config(negation_file, tmp_path, max_steps=1))
    with pytest.raises(ValueError, match="--layers is '0' but was 'front'"):
        train(_config(negation_file, tmp_path, layers="0"), resume=True)

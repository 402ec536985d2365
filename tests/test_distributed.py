"""Training on 2 CPU processes (gloo) under torchrun and accelerate launch equals one process over the same batches.

The launched processes run this file: `python tests/test_distributed.py worker RUN_ROOT DATA`. Each trains 2 of 4
steps, stops, and resumes from the checkpoint to step 4, so one launch checks both the distributed update and
resuming.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from negclip.config import TrainConfig  # noqa: E402
from conftest import write_negation_file  # noqa: E402
from negclip.data import NegationExample  # noqa: E402

STEPS = 4
STOP_AFTER = 2
LAUNCH_TIMEOUT_SECONDS = 240
# Two processes add up the same numbers as one in another order, which changes results by about 1e-7 relative.
# Adam turns a gradient difference into a weight difference of at most learning rate / eps times it.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-5  # relative to the largest gradient of the model


def _config(data: Path, output_dir: Path) -> TrainConfig:
    return TrainConfig(
        data=str(data), model="tiny-random", output_dir=str(output_dir), batch_size=8, max_steps=STEPS,
        learning_rate=1e-3, warmup_steps=1, eval_fraction=0.0, save_every=100, log_every=1, device="cpu",
    )  # fmt: skip


def _worker(root: Path, data: Path) -> None:
    """Train 2 steps, stop, and resume to step 4. Record each process's losses, checkpoint writes and gradients."""
    import negclip.train as train_module
    from negclip import distributed

    torch.set_num_threads(1)  # two processes share the machine's cores
    rank = int(os.environ["RANK"])
    saves = []
    real_save = train_module._save_checkpoint

    def recording_save(path, *args, **kwargs):
        saves.append(str(path))
        return real_save(path, *args, **kwargs)

    train_module._save_checkpoint = recording_save
    losses = []

    def record(step, total, values):
        losses.append(values["loss"])

    config = _config(data, root / "run")
    train_module.train(config, on_step=record, should_stop=lambda: len(losses) >= STOP_AFTER)
    train_module.train(config, on_step=record, resume=True)
    report = {"rank": rank, "world_size": distributed.world_size(), "losses": losses, "saves": saves}
    (root / f"rank{rank}.json").write_text(json.dumps(report))
    torch.save(_first_batch_gradients(data), root / f"gradients{rank}.pt")
    distributed.cleanup()


def _first_batch_gradients(data: Path) -> dict[str, torch.Tensor]:
    """Gradients of the first global batch's loss, after averaging across processes when there are several.

    AdamW's update hardly changes when every gradient is scaled by the same factor. The weights alone would
    therefore not show a gradient that is summed instead of averaged, but the gradients do.
    """
    from negclip import distributed
    from negclip.encode import encode_images
    from negclip.losses import OmniNegLoss
    from negclip.models import load_clip
    from negclip.sources import load_negation_examples
    from negclip.train import batch_order, step_losses
    from negclip.tuning import prepare_for_training, select_layers

    config = _config(data, Path("unused")).resolved()
    examples = load_negation_examples(data)
    clip = load_clip("tiny-random")
    images = sorted({example.image for example in examples})
    image_embeds = encode_images(clip, images)
    model = prepare_for_training(clip.model, select_layers(config.layers, clip.num_text_layers), config)
    model.train()

    def local_examples(stream: int) -> tuple[list[NegationExample], torch.Tensor]:
        indices = distributed.local_slice(batch_order(len(examples), config.batch_size, config.seed, 0, stream)[0])
        chosen = [examples[index] for index in indices]
        return chosen, torch.tensor([images.index(example.image) for example in chosen])

    presence, presence_images = local_examples(0)
    absence, absence_images = local_examples(1)
    loss_fn = OmniNegLoss()
    losses = step_losses(
        model, clip.tokenizer, loss_fn, image_embeds, presence, presence_images, absence, absence_images
    )
    losses["loss"].backward()
    distributed.average_gradients(model.parameters())
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def negation_file(photo_paths, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "negations.jsonl"
    return write_negation_file(photo_paths[:16], "a photo with a {present} and a table number {index}", path)


@pytest.fixture(scope="module")
def single_process(negation_file, tmp_path_factory):
    """The reference: one process, 4 uninterrupted steps over the same global batches."""
    from negclip.train import train

    output_dir = tmp_path_factory.mktemp("single") / "run"
    losses = []
    train(_config(negation_file, output_dir), on_step=lambda step, total, values: losses.append(values["loss"]))
    return {
        "losses": losses,
        "weights": _trained_weights(output_dir / "adapter"),
        "gradients": _first_batch_gradients(negation_file),
    }


def _trained_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Return the trained tensors of an adapter, applied to a fresh copy of the base model."""
    from negclip.models import load_clip
    from negclip.tuning import load_adapter, read_adapter_info

    names = read_adapter_info(adapter_dir)["parameters"]
    parameters = dict(load_adapter(load_clip("tiny-random"), adapter_dir).model.named_parameters())
    return {name: parameters[name].detach() for name in names}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(command: list[str], root: Path) -> None:
    environment = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", NEGCLIP_BACKEND="gloo")
    completed = subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_SECONDS
    )
    assert completed.returncode == 0, f"launch failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"


def _check_against_single_process(root: Path, single_process: dict) -> None:
    reports = [json.loads((root / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [report["world_size"] for report in reports] == [2, 2]

    for report in reports:
        assert report["losses"] == pytest.approx(single_process["losses"], rel=LOSS_TOLERANCE)
    assert reports[1]["saves"] == []  # rank 1 never writes a checkpoint
    assert len(reports[0]["saves"]) == 2  # once when stopped at step 2, once at the end

    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert [record["step"] for record in metrics["history"]] == list(range(1, STEPS + 1))
    history_losses = [record["loss"] for record in metrics["history"]]
    assert history_losses == pytest.approx(single_process["losses"], rel=LOSS_TOLERANCE)

    weights = _trained_weights(root / "run" / "adapter")
    assert sorted(weights) == sorted(single_process["weights"])
    for name, tensor in weights.items():
        difference = (tensor - single_process["weights"][name]).abs().max().item()
        assert difference < WEIGHT_TOLERANCE, f"{name} differs by {difference:.2e}"

    expected_gradients = single_process["gradients"]
    # Some gradients are zero up to rounding (a key bias cancels in the softmax), so the tolerance follows the
    # largest gradient of the model rather than that of each tensor.
    tolerance = GRADIENT_TOLERANCE * max(gradient.abs().max().item() for gradient in expected_gradients.values())
    for rank in (0, 1):
        gradients = torch.load(root / f"gradients{rank}.pt", weights_only=True)
        assert sorted(gradients) == sorted(expected_gradients)
        for name, gradient in gradients.items():
            difference = (gradient - expected_gradients[name]).abs().max().item()
            assert difference <= tolerance, f"{name}: gradients differ by {difference:.2e} (tolerance {tolerance:.2e})"


def test_torchrun_two_processes_match_one(negation_file, single_process, tmp_path):
    if shutil.which("torchrun") is None and not _has_module("torch.distributed.run"):
        pytest.skip("torch.distributed.run is not available")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _launch(command + [__file__, "worker", str(tmp_path), str(negation_file)], tmp_path)
    _check_against_single_process(tmp_path, single_process)


def test_accelerate_launch_two_processes_match_one(negation_file, single_process, tmp_path):
    if not _has_module("accelerate"):
        pytest.skip("accelerate is not installed")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(_free_port())]
    _launch(command + [__file__, "worker", str(tmp_path), str(negation_file)], tmp_path)
    _check_against_single_process(tmp_path, single_process)


def test_trained_weights_moved(single_process):
    """The tolerance above must be far below the change that training makes, or the comparison proves nothing."""
    from negclip.models import load_clip

    base = dict(load_clip("tiny-random").model.named_parameters())
    changes = {name: (tensor - base[name].detach()).abs().max().item() for name, tensor in single_process["weights"].items()}
    assert max(changes.values()) > 100 * WEIGHT_TOLERANCE
    assert changes["text_model.encoder.layers.0.mlp.fc1.weight"] > 100 * WEIGHT_TOLERANCE


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(Path(sys.argv[2]), Path(sys.argv[3]))

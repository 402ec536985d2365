"""Layer selection, what a training step may change, and adapter save/load round trips on tiny-random."""

import json

import pytest
import torch

from negclip.config import TrainConfig
from negclip.encode import encode_texts
from negclip.losses import OmniNegLoss
from negclip.models import load_clip
from negclip.scoring import score_captions
from negclip.train import build_optimizer, step_losses
from negclip.tuning import (
    FULL_WEIGHTS_FILE,
    AdapterError,
    load_adapter,
    prepare_for_training,
    save_adapter,
    select_layers,
    trainable_parameter_names,
)
from negclip.data import NegationExample


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("front", [0, 1, 2, 3, 4, 5]),
        ("back", [6, 7, 8, 9, 10, 11]),
        ("middle", [3, 4, 5, 6, 7, 8]),
        ("all", list(range(12))),
        ("0-3", [0, 1, 2, 3]),
        ("0,2, 5", [0, 2, 5]),
        ("1-2,7", [1, 2, 7]),
    ],
)
def test_select_layers_presets_and_ranges(spec, expected):
    assert select_layers(spec, 12) == expected


@pytest.mark.parametrize("spec", ["0-12", "front-ish", "", "3-x"])
def test_select_layers_rejects_invalid(spec):
    with pytest.raises(ValueError, match="layer"):
        select_layers(spec, 12)


def _examples(photo_paths):
    captions = ["a dog on a sofa", "a red car in the street", "two people at a table", "a cat on a bed"]
    objects = ["dog", "car", "person", "cat"]
    absent = ["cat", "bicycle", "fork", "dog"]
    return [
        NegationExample(
            image=str(path),
            caption=caption,
            presence_negated=f"{caption}, but there is no {present}",
            absence_negated=f"{caption}, but there is no {missing}",
            present_object=present,
            absent_object=missing,
            objects=[present],
            absent_objects=[missing],
        )
        for path, caption, present, missing in zip(photo_paths, captions, objects, absent)
    ]


def _train_one_step(clip, config, examples):
    layers = select_layers(config.layers, clip.num_text_layers)
    model = prepare_for_training(clip.model, layers, config)
    model.train()
    from negclip.encode import encode_images

    image_embeds = encode_images(clip, [e.image for e in examples])
    index = torch.arange(len(examples))
    optimizer = build_optimizer(model, config)
    losses = step_losses(model, clip.tokenizer, OmniNegLoss(), image_embeds, examples, index, examples, index)
    losses["loss"].backward()
    optimizer.step()
    model.eval()
    return model, layers


def test_full_step_changes_only_selected(photo_paths):
    clip = load_clip("tiny-random")
    before = {name: p.detach().clone() for name, p in clip.model.named_parameters()}
    config = TrainConfig(layers="0-1", mode="full", learning_rate=1e-2).resolved()

    model, layers = _train_one_step(clip, config, _examples(photo_paths[:4]))

    selected = set(trainable_parameter_names(model, layers, config))
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in selected
    assert "text_model.encoder.layers.2.self_attn.q_proj.weight" not in selected
    assert "logit_scale" in selected
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed, "a step with lr 1e-2 must change some weights"
    assert changed <= selected
    for name, parameter in model.named_parameters():
        if name.startswith("vision_model.") or name.startswith("visual_projection."):
            assert torch.equal(parameter, before[name]), name
        if name.startswith(("text_model.encoder.layers.2.", "text_model.encoder.layers.3.")):
            assert torch.equal(parameter, before[name]), name


def test_full_switches_freeze_extras(photo_paths):
    clip = load_clip("tiny-random")
    config = TrainConfig(
        layers="front", train_embeddings=False, train_final_layer_norm=False, train_text_projection=False,
        train_logit_scale=False,
    ).resolved()
    names = trainable_parameter_names(clip.model, select_layers("front", 4), config)
    assert names
    assert all(name.startswith(("text_model.encoder.layers.0.", "text_model.encoder.layers.1.")) for name in names)


def test_full_adapter_round_trip(photo_paths, tmp_path):
    clip = load_clip("tiny-random")
    base_scores = score_captions(clip, photo_paths[0], ["a dog", "no dog"], cache=None)
    config = TrainConfig(layers="front", mode="full", learning_rate=1e-2).resolved()
    model, layers = _train_one_step(clip, config, _examples(photo_paths[:4]))
    trained_scores = score_captions(clip, photo_paths[0], ["a dog", "no dog"], cache=None)
    names = trainable_parameter_names(model, layers, config)

    save_adapter(model, tmp_path / "adapter", {"mode": "full", "base_model": "tiny-random", "parameters": names})
    reloaded = load_adapter(load_clip("tiny-random"), tmp_path / "adapter")
    reloaded_scores = score_captions(reloaded, photo_paths[0], ["a dog", "no dog"], cache=None)

    assert trained_scores.cosine != base_scores.cosine
    assert reloaded_scores.cosine == trained_scores.cosine
    assert reloaded_scores.probability == trained_scores.probability
    saved = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert saved == sorted([FULL_WEIGHTS_FILE, "negclip_adapter.json"])
    info = json.loads((tmp_path / "adapter" / "negclip_adapter.json").read_text())
    assert info["mode"] == "full"


def test_lora_adapter_round_trip(photo_paths, tmp_path):
    clip = load_clip("tiny-random")
    base_texts = encode_texts(clip, ["a dog", "no dog"])
    before = {name: p.detach().clone() for name, p in clip.model.named_parameters()}
    config = TrainConfig(layers="0-1", mode="lora", learning_rate=1e-2).resolved()
    model, _ = _train_one_step(clip, config, _examples(photo_paths[:4]))
    trained_texts = encode_texts(type(clip)(model, clip.tokenizer, clip.preprocess, "tiny-random"), ["a dog", "no dog"])
    assert not torch.allclose(trained_texts, base_texts, atol=1e-6)

    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert all(".layers.0." in name or ".layers.1." in name for name in trainable)
    for name, parameter in model.get_base_model().named_parameters():
        if "lora_" not in name and "base_layer" not in name:
            assert torch.equal(parameter, before[name]), name

    save_adapter(model, tmp_path / "lora", {"mode": "lora", "base_model": "tiny-random"})
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    reloaded = load_adapter(load_clip("tiny-random"), tmp_path / "lora")
    reloaded_texts = encode_texts(reloaded, ["a dog", "no dog"])
    assert torch.allclose(reloaded_texts, trained_texts, atol=1e-6)


def test_load_adapter_leaves_base_untouched(photo_paths, tmp_path):
    clip = load_clip("tiny-random")
    config = TrainConfig(layers="front", learning_rate=1e-2).resolved()
    trained_clip = load_clip("tiny-random")
    model, layers = _train_one_step(trained_clip, config, _examples(photo_paths[:4]))
    save_adapter(model, tmp_path / "a", {"mode": "full", "parameters": trainable_parameter_names(model, layers, config)})
    before = encode_texts(clip, ["a dog"])
    tuned = load_adapter(clip, tmp_path / "a")
    assert torch.equal(encode_texts(clip, ["a dog"]), before)
    assert not torch.equal(encode_texts(tuned, ["a dog"]), before)


def test_load_adapter_errors(tmp_path):
    clip = load_clip("tiny-random")
    with pytest.raises(AdapterError, match="adapter not found"):
        load_adapter(clip, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="not an adapter folder"):
        load_adapter(clip, tmp_path / "empty")


def test_save_adapter_keeps_old_on_failure(tmp_path):
    clip = load_clip("tiny-random")
    folder = tmp_path / "adapter"
    save_adapter(clip.model, folder, {"mode": "full", "parameters": ["logit_scale"]})
    original = (folder / FULL_WEIGHTS_FILE).read_bytes()

    with pytest.raises(KeyError):
        save_adapter(clip.model, folder, {"mode": "full", "parameters": ["no.such.parameter"]})

    assert (folder / FULL_WEIGHTS_FILE).read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_save_adapter_disk_full_keeps_old(tmp_path, monkeypatch):
    import errno

    import negclip.tuning as tuning

    clip = load_clip("tiny-random")
    folder = tmp_path / "adapter"
    save_adapter(clip.model, folder, {"mode": "full", "parameters": ["logit_scale"]})
    original = (folder / FULL_WEIGHTS_FILE).read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tuning, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_adapter(clip.model, folder, {"mode": "full", "parameters": ["logit_scale"]})

    assert (folder / FULL_WEIGHTS_FILE).read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_full_adapter_saves_changed_embedding_rows(photo_paths, tmp_path):
    from safetensors.torch import load_file

    from negclip.tuning import sparse_row_reference

    clip = load_clip("tiny-random")
    reference = sparse_row_reference(clip.model)
    config = TrainConfig(layers="front", mode="full", learning_rate=1e-2, weight_decay=0.2).resolved()
    model, layers = _train_one_step(clip, config, _examples(photo_paths[:4]))
    names = trainable_parameter_names(model, layers, config)
    trained = encode_texts(clip, ["a dog on a sofa", "a zebra"])

    save_adapter(model, tmp_path / "adapter", {"mode": "full", "parameters": names}, row_reference=reference)
    saved = load_file(str(tmp_path / "adapter" / FULL_WEIGHTS_FILE))
    rows = saved["text_model.embeddings.token_embedding.weight.changed_rows"]
    tokens_seen = {
        token for e in _examples(photo_paths[:4]) for text in (e.caption, e.presence_negated, e.absence_negated)
        for token in clip.tokenizer(text)["input_ids"]
    }
    assert "text_model.embeddings.token_embedding.weight" not in saved
    assert set(rows.tolist()) == tokens_seen  # only the rows of tokens in the training captions moved
    reloaded = load_adapter(load_clip("tiny-random"), tmp_path / "adapter")
    assert torch.equal(encode_texts(reloaded, ["a dog on a sofa", "a zebra"]), trained)

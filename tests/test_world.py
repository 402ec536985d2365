"""Tests of the negation world: the scene generator, split files, pretraining and the bundled model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from negclip import world
from negclip.config import TrainConfig
from negclip.data import read_jsonl, read_negbench_mcq_csv, read_negbench_retrieval_csv
from negclip.evaluate import evaluate_presence
from negclip.models import NEGATION_WORLD_ADAPTER_DIR, NEGATION_WORLD_MODEL_DIR, load_clip
from negclip.pretrain import PretrainConfig, pretrain
from negclip.train import train
from negclip.tuning import load_adapter

REPO = Path(__file__).resolve().parents[1]
REPORT_JSON = REPO / "docs" / "negation-world.json"
NEGATION_WORDS = re.compile(r"\b(no|not|without|none|nothing|never)\b", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------
# Generator


def test_scene_same_seed_same_scene():
    first_image, first = world.scene_records("test", 7, 3)
    second_image, second = world.scene_records("test", 7, 3)
    assert first == second
    assert first_image.tobytes() == second_image.tobytes()


def test_scene_other_seed_other_scene():
    first_image, _ = world.scene_records("test", 7, 3)
    other_image, _ = world.scene_records("test", 8, 3)
    assert first_image.tobytes() != other_image.tobytes()


def test_scene_contents_valid():
    for index in range(200):
        image, record = world.scene_records("train", 0, index)
        assert image.size == (world.DEFAULT_IMAGE_SIZE, world.DEFAULT_IMAGE_SIZE)
        assert 1 <= len(record["objects"]) <= world.MAX_OBJECTS
        assert len(set(record["objects"])) == len(record["objects"])
        assert set(record["objects"]) <= set(world.OBJECTS)
        assert record["present_object"] in record["objects"]
        assert record["absent_object"] not in record["objects"]
        assert not set(record["absent_objects"]) & set(record["objects"])


def test_rooms_cover_vocabulary():
    in_rooms = {name for room in world.ROOMS for name in room.objects}
    assert in_rooms == set(world.OBJECTS)
    assert all(len(room.objects) == 8 for room in world.ROOMS)


def test_affirmative_captions_no_negation():
    rng = np.random.default_rng(0)
    for _ in range(500):
        scene = world.sample_scene(rng)
        caption = world.affirmative_caption(rng, scene.object_names, scene.room)
        assert not NEGATION_WORDS.search(caption), caption
        for name in scene.object_names:
            assert name in caption.lower(), caption


def test_emphasis_clause_sometimes_only_mention():
    """Pretraining captions mirror presence-negated ones: an object may be named only in the stressing clause."""
    rng = np.random.default_rng(3)
    captions = [world.affirmative_caption(rng, ["red circle", "blue star"], "kitchen") for _ in range(400)]
    once = [caption for caption in captions if caption.lower().count("red circle") == 1]
    clause_only = [
        caption
        for caption in once
        if re.search(r"(but there is|with|and) an? red circles?\b.*\.$", caption.lower())
        and "blue star" in caption.lower().split("red circle")[0]
    ]
    assert len(clause_only) > 20
    assert any("red circles in sight" in caption for caption in captions)

    lone = [world.affirmative_caption(rng, ["red circle"], "garage") for _ in range(200)]
    assert any(caption.startswith(("A photo of the garage", "A picture of a garage", "An image of the garage")) for caption in lone)


def test_negated_captions_name_object():
    rng = np.random.default_rng(1)
    names = ["red circle", "orange star"]
    presence = world.presence_negated_caption(rng, names, "orange star", "kitchen")
    absence = world.absence_negated_caption(rng, names, "blue ring", "kitchen")
    assert NEGATION_WORDS.search(presence)
    assert "orange star" in presence
    assert "red circle" in presence
    assert NEGATION_WORDS.search(absence)
    assert "blue ring" in absence
    assert "red circle" in absence
    assert "orange star" in absence


def test_mcq_options_one_true():
    names, absent = ["red circle", "orange star"], ["blue ring", "green cross"]
    for seed in range(20):
        for template in world.MCQ_TEMPLATES:
            options, correct = world.mcq_options(np.random.default_rng(seed), names, absent, template)
            true_option = options[correct]
            assert len(options) == 4
            assert len(set(options)) == 4
            if template == "positive":
                assert not NEGATION_WORDS.search(true_option), true_option
                assert all(name in true_option for name in names), true_option
            if template == "negative":
                assert any(f"no {name}" in true_option.lower() for name in absent), true_option
                assert not any(name in true_option for name in names), true_option
            if template == "hybrid":
                assert any(name in true_option for name in names), true_option
                assert any(f"no {name}" in true_option.lower() for name in absent), true_option


# ---------------------------------------------------------------------------------------------------------
# Split files


def test_split_files_read_back(tmp_path):
    summary = world.generate_split(tmp_path / "split", "val", seed=5, count=30)
    examples = read_jsonl(summary.examples)
    mcq = read_negbench_mcq_csv(summary.mcq)
    retrieval = read_negbench_retrieval_csv(summary.retrieval)
    negated = read_negbench_retrieval_csv(summary.negated_retrieval)

    assert len(examples) == 30
    assert len(mcq) == 30
    assert len(retrieval) == 30
    assert len(negated) == 30
    assert all(Path(example.image).is_file() for example in examples)
    assert examples[0].image_id == "val-5-000000"
    assert {item.template for item in mcq} == set(world.MCQ_TEMPLATES)
    assert all(len(item.captions) == 4 for item in mcq)
    assert all(len(record.captions) == world.RETRIEVAL_CAPTIONS_PER_IMAGE for record in retrieval)
    assert all(NEGATION_WORDS.search(caption) for record in negated for caption in record.captions)
    manifest = json.loads((summary.folder / "world.json").read_text())
    assert manifest["seed"] == 5
    assert manifest["count"] == 30


def test_split_prefix_stable(tmp_path):
    short = world.generate_split(tmp_path / "short", "test", seed=2, count=5)
    long = world.generate_split(tmp_path / "long", "test", seed=2, count=8)
    short_rows = short.examples.read_text().splitlines()
    long_rows = long.examples.read_text().splitlines()
    assert short_rows == long_rows[:5]
    assert (short.folder / "images/000004.png").read_bytes() == (long.folder / "images/000004.png").read_bytes()


def test_split_bad_count_rejected(tmp_path):
    with pytest.raises(ValueError, match="count"):
        world.generate_split(tmp_path, "train", seed=0, count=0)


def test_world_command_writes_split(tmp_path):
    from negclip.cli import main

    assert main(["world", "--split", "test", "--count", "6", "--out", str(tmp_path / "cli")]) == 0
    examples = read_jsonl(tmp_path / "cli" / "examples.jsonl")
    assert len(examples) == 6
    assert examples[0].image_id == "test-2-000000"


# ---------------------------------------------------------------------------------------------------------
# Pretraining and fine-tuning, reduced


def test_reduced_pretrain_then_tune(tmp_path):
    """A small pretrain stays near chance on presence, and front-layer tuning lifts it clearly above that."""
    settings = PretrainConfig(
        output_dir=str(tmp_path / "model"),
        steps=120,
        batch_size=64,
        learning_rate=2e-3,
        warmup_steps=20,
        scenes=2000,
        image_size=32,
        text_width=64,
        text_layers=8,
        vision_width=64,
        vision_layers=2,
        patch_size=8,
        projection_dim=64,
        monitor_every=1000,
        monitor_scenes=64,
    )
    pretrain(settings)
    split = world.generate_split(tmp_path / "train", "train", seed=0, count=400, image_size=32)
    test = world.generate_split(tmp_path / "test", "test", seed=2, count=200, image_size=32)
    base = load_clip(str(tmp_path / "model"))
    assert base.model.config.text_config.num_hidden_layers == 8

    config = TrainConfig(
        data=str(split.examples),
        model=str(tmp_path / "model"),
        output_dir=str(tmp_path / "tuned"),
        layers="front",
        max_steps=150,
        batch_size=32,
        learning_rate=3e-3,
        warmup_steps=5,
        eval_fraction=0.0,
        device="cpu",
    )
    result = train(config, clip=base)
    tuned = load_adapter(base, result.adapter_dir)

    examples = read_jsonl(test.examples)
    before = evaluate_presence(base, examples)["accuracy"]
    after = evaluate_presence(tuned, examples)["accuracy"]
    assert before < 0.7
    assert after > before + 0.20


# ---------------------------------------------------------------------------------------------------------
# Bundled model and adapter


def test_bundled_model_folder_small():
    files = list(NEGATION_WORLD_MODEL_DIR.iterdir())
    assert sum(path.stat().st_size for path in files) <= 20_000_000
    assert (NEGATION_WORLD_MODEL_DIR / "model.safetensors").is_file()
    assert (NEGATION_WORLD_MODEL_DIR / "vocab.json").is_file()
    assert (NEGATION_WORLD_MODEL_DIR / "preprocessor_config.json").is_file()


def test_bundled_model_loads_as_folder():
    by_name = load_clip("negation-world")
    by_folder = load_clip(str(NEGATION_WORLD_MODEL_DIR))
    config = by_name.model.config
    assert config.text_config.num_hidden_layers >= 8
    assert config.text_config.vocab_size == 49408
    assert config.text_config.eos_token_id == 49407
    assert by_name.preprocess.image_size == config.vision_config.image_size
    for (name, left), (_, right) in zip(by_name.model.state_dict().items(), by_folder.model.state_dict().items()):
        assert torch.equal(left, right), name


def test_bundled_presence_matches_report(tmp_path):
    """The bundled model and adapter reproduce the presence accuracy the report recorded."""
    report = json.loads(REPORT_JSON.read_text())
    settings = report["settings"]
    split = world.generate_split(
        tmp_path / "test", "test", seed=settings["test_seed"], count=settings["reference_scenes"]
    )
    examples = read_jsonl(split.examples)
    base = load_clip("negation-world")
    tuned = load_adapter(base, "negation-world")
    assert NEGATION_WORLD_ADAPTER_DIR.is_dir()

    base_accuracy = evaluate_presence(base, examples)["accuracy"]
    tuned_accuracy = evaluate_presence(tuned, examples)["accuracy"]
    assert base_accuracy == pytest.approx(report["base"]["presence_reference"], abs=0.01)
    assert tuned_accuracy == pytest.approx(report["tuned"]["presence_reference"], abs=0.01)
    assert tuned_accuracy > base_accuracy + 0.30

"""Tests for the app's handlers (webapp/) and app.py, called directly on real photos without a browser."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
from PIL import Image

import app
from analysis.objects import guess_objects, suggest_negations
from negclip.config import TrainConfig
from negclip.evaluate import evaluate_mcq, evaluate_presence
from negclip.images import ImageLoadError
from negclip.models import load_clip
from negclip.scoring import SHARED_IMAGE_CACHE, score_captions
from negclip.sources import load_negation_examples
from negclip.train import train
from negclip.tuning import AdapterError, load_adapter
from webapp import compare, datasets, evaluation, explore, finetune, inputs, models
from webapp.models import (
    NO_ADAPTER,
    SESSION_ADAPTER,
    ModelStore,
    load_startup_model,
    negation_world_available,
    resolve_adapter,
)
from webapp.session import Session, delete_session

MODEL = "tiny-random"


@pytest.fixture(autouse=True)
def session_folders(tmp_path, monkeypatch):
    """Keep every session folder and generated world split under this test's temporary folder."""
    monkeypatch.setenv("NEGCLIP_APP_WORK_DIR", str(tmp_path / "app-work"))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> str:
    """A tiny-random adapter trained for 3 steps on the bundled example photos."""
    output = tmp_path_factory.mktemp("adapter-run")
    config = TrainConfig(
        data=str(datasets.EXAMPLES_NEGATIONS), model=MODEL, output_dir=str(output), max_steps=3, batch_size=8,
        learning_rate=1e-3, device="cpu",
    )
    return str(train(config).adapter_dir)


@pytest.fixture
def session(photo_paths) -> Session:
    return Session(photo=str(photo_paths[0]))


@pytest.fixture(scope="module")
def negation_zip(tmp_path_factory) -> Path:
    """The bundled example set as an upload: negations.jsonl plus a zip of its six photos."""
    folder = tmp_path_factory.mktemp("upload")
    archive = folder / "photos.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        for photo in datasets.example_photos():
            opened.write(photo.path, Path(photo.path).name)
    return archive


# ---------------------------------------------------------------- captions and uploads


def test_parse_captions_drops_blank_and_repeats():
    parsed = inputs.parse_captions("A dog.\n\n  A   cat. \nA dog.\n")
    assert parsed.captions == ["A dog.", "A cat."]
    assert parsed.notes == ["1 repeated caption(s) were ignored"]


def test_parse_captions_empty():
    with pytest.raises(inputs.InputError, match="no captions given"):
        inputs.parse_captions(" \n\n ")


def test_parse_captions_limits():
    with pytest.raises(inputs.InputError, match="over the limit of 24"):
        inputs.parse_captions("\n".join(f"caption {index}" for index in range(25)))
    with pytest.raises(inputs.InputError, match="line 2 has 1,001 characters"):
        inputs.parse_captions("short\n" + "x" * 1001)


def test_parse_captions_truncation_note():
    tokenizer = load_clip(MODEL).tokenizer
    long_caption = " ".join(["dog"] * 100)
    parsed = inputs.parse_captions(f"a dog\n{long_caption}", tokenizer)
    assert parsed.captions[1] == long_caption
    assert parsed.notes == ["1 caption(s) are longer than CLIP's 77 tokens and were scored on their first 77 tokens only"]


def test_check_photo_real(photo_paths):
    assert inputs.check_photo(str(photo_paths[0])) == str(photo_paths[0])


def test_check_photo_rejects_bad_files(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(ImageLoadError, match="not an image file"):
        inputs.check_photo(str(text))
    with pytest.raises(inputs.InputError, match="no photo given"):
        inputs.check_photo(None)


def test_check_photo_truncated(tmp_path, photo_paths):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo_paths[0].read_bytes()[:5000])
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        inputs.check_photo(str(truncated))


def test_check_photo_huge(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 9000)).save(huge)  # 81 million pixels in a small file
    with pytest.raises(ImageLoadError, match="too large"):
        inputs.check_photo(str(huge))


def test_set_photo_message_not_trace(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("plain text")
    with pytest.raises(gr.Error) as raised:
        compare.set_photo(str(text), Session())
    assert "not an image file" in raised.value.message
    assert "Traceback" not in raised.value.message


def _zip_with(path: Path, name: str, mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as opened:
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        opened.writestr(info, "data")
    return path


@pytest.mark.parametrize(
    ("member", "problem"),
    [("../evil.txt", "leads outside"), ("images/../../evil.txt", "leads outside"), ("/etc/evil.txt", "absolute path")],
)
def test_extract_zip_rejects_paths(tmp_path, member, problem):
    archive = _zip_with(tmp_path / "bad.zip", member)
    with pytest.raises(inputs.InputError, match=problem):
        inputs.extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_extract_zip_rejects_symlink(tmp_path):
    archive = _zip_with(tmp_path / "link.zip", "images/link.jpg", mode=stat.S_IFLNK | 0o777)
    with pytest.raises(inputs.InputError, match="symbolic link"):
        inputs.extract_zip(archive, tmp_path / "out")


def test_extract_zip_rejects_bomb(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_ZIP_UNCOMPRESSED_BYTES", 1000)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as opened:
        opened.writestr("zeros.bin", b"\0" * 5000)
    with pytest.raises(inputs.InputError, match="would extract to"):
        inputs.extract_zip(archive, tmp_path / "out")


def test_extract_zip_not_a_zip(tmp_path):
    fake = tmp_path / "photos.zip"
    fake.write_text("no zip here")
    with pytest.raises(inputs.InputError, match="not a zip archive"):
        inputs.extract_zip(fake, tmp_path / "out")


def test_upload_data_real_photos(negation_zip):
    session = Session()
    message, session = finetune.upload_data(str(datasets.EXAMPLES_NEGATIONS), str(negation_zip), session)
    assert message.startswith("Uploaded negations.jsonl: 30 negation jsonl items")
    assert session.upload.format == "negation_jsonl"
    assert (session.upload.image_root / "000000177015.jpg").is_file()
    data, image_root = datasets.training_data(datasets.UPLOADED, session.upload)
    assert len(load_negation_examples(data, image_root)) == 30


def test_upload_data_csv_missing_columns(tmp_path, negation_zip):
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("image,caption\n000000177015.jpg,A man with a cat.\n")
    with pytest.raises(gr.Error) as raised:
        finetune.upload_data(str(csv_file), str(negation_zip), Session())
    assert "unrecognised CSV columns" in raised.value.message
    assert "line 1" in raised.value.message


def test_upload_data_missing_images(tmp_path):
    rows = tmp_path / "rows.jsonl"
    example = {"image": "gone.jpg", "caption": "a", "presence_negated": "b", "absence_negated": "c"}
    rows.write_text(json.dumps(example) + "\n")
    with pytest.raises(gr.Error) as raised:
        finetune.upload_data(str(rows), None, Session())
    assert "1 of 1 images" in raised.value.message
    assert "&lt;the folder that holds the images&gt;" in raised.value.message  # escaped for the HTML modal


def test_upload_data_wrong_types(tmp_path):
    with pytest.raises(gr.Error, match="no files uploaded"):
        finetune.upload_data(None, None, Session())
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(gr.Error) as raised:
        finetune.upload_data(str(notes), None, Session())
    assert "not a data file" in raised.value.message


# ---------------------------------------------------------------- models


def test_model_store_loads_once():
    store = ModelStore()
    first = store.base(MODEL)
    assert store.base(MODEL) is first
    assert store.loaded() == [(MODEL, None)]


def test_model_store_evicts_unpinned(adapter_dir):
    store = ModelStore(max_entries=1)
    store.pin(MODEL)
    base = store.base(MODEL)
    store.tuned(MODEL, adapter_dir)
    assert store.loaded() == [(MODEL, None)]
    assert store.base(MODEL) is base


def test_startup_falls_back_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    startup = load_startup_model(ModelStore(), "openai/clip-vit-base-patch32")
    expected = "negation-world" if negation_world_available() else "tiny-random"
    assert startup.model == expected
    assert f"running `{expected}` instead of `openai/clip-vit-base-patch32`" in startup.notice
    assert "hf download openai/clip-vit-base-patch32" in startup.notice


def test_startup_prefers_negation_world(monkeypatch, tmp_path, adapter_dir):
    """Once the negation-world model and adapter are bundled, the offline fallback is that pair."""
    import shutil

    import negclip.models
    import negclip.tuning

    model_dir = tmp_path / "negation-world" / "model"
    load_clip(MODEL).model.save_pretrained(model_dir)
    bundled_adapter = shutil.copytree(adapter_dir, tmp_path / "negation-world" / "adapter")
    monkeypatch.setattr(negclip.models, "NEGATION_WORLD_MODEL_DIR", model_dir)
    monkeypatch.setattr(models, "NEGATION_WORLD_MODEL_DIR", model_dir)
    monkeypatch.setattr(models, "NEGATION_WORLD_ADAPTER_DIR", bundled_adapter)
    monkeypatch.setitem(negclip.tuning.BUILTIN_ADAPTERS, "negation-world", bundled_adapter)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    store = ModelStore()
    startup = load_startup_model(store, "openai/clip-vit-base-patch32")
    assert (startup.model, startup.adapter) == ("negation-world", "negation-world")
    assert "running `negation-world` instead of" in startup.notice
    assert models.model_choices() == ["openai/clip-vit-base-patch32", "negation-world", "tiny-random"]
    assert models.adapter_choices() == [NO_ADAPTER, "negation-world"]
    tuned = store.tuned(startup.model, resolve_adapter(startup.adapter, None))
    assert tuned.adapter == "negation-world"


def test_startup_requested_model():
    startup = load_startup_model(ModelStore(), MODEL)
    assert (startup.model, startup.adapter, startup.notice) == (MODEL, NO_ADAPTER, "")


def test_resolve_adapter_choices(adapter_dir):
    assert resolve_adapter(NO_ADAPTER, None) is None
    assert resolve_adapter("", None) is None
    assert resolve_adapter(SESSION_ADAPTER, adapter_dir) == adapter_dir
    with pytest.raises(AdapterError, match="no adapter has been fine-tuned"):
        resolve_adapter(SESSION_ADAPTER, None)


def test_adapter_choices_keep_startup_adapter(monkeypatch, adapter_dir):
    monkeypatch.setattr(models, "STARTUP_ADAPTERS", [adapter_dir])
    choices = models.adapter_choices(has_session_adapter=True)
    assert choices[0] == NO_ADAPTER
    assert choices[-2:] == [adapter_dir, SESSION_ADAPTER]


def test_compare_unknown_adapter(session):
    with pytest.raises(gr.Error) as raised:
        compare.compare(session, "a dog", [], MODEL, "/no/such/adapter")
    assert "adapter not found: /no/such/adapter" in raised.value.message


# ---------------------------------------------------------------- Compare


def test_choose_example_defaults():
    session = Session()
    photo, captions, truth, session = compare.choose_example(0, session)
    example = datasets.example_photos()[0]
    assert photo == example.path == session.photo
    assert captions.splitlines() == example.captions
    assert truth["value"] == example.true_captions
    assert len(example.captions) == 4


def test_example_photos_add_world_scenes(monkeypatch):
    monkeypatch.setattr(datasets, "negation_world_available", lambda: True)
    photos = datasets.example_photos()
    assert len(photos) == 6 + datasets.WORLD_EXAMPLE_SCENES
    scene = photos[6]
    assert scene.label.startswith("scene: ")
    assert Path(scene.path).is_file()
    assert len(scene.captions) == 3
    assert scene.true_captions == [scene.captions[0], scene.captions[2]]
    assert compare.is_negated(scene.captions[1])


def test_compare_matches_scoring(session, adapter_dir):
    captions = ["A man riding skis.", "A man riding skis, but there is no snow.", "A plate of food."]
    table, summary, figure = compare.compare(session, "\n".join(captions), [captions[0]], MODEL, adapter_dir)

    base = load_clip(MODEL)
    expected_base = score_captions(base, session.photo, captions)
    expected_tuned = score_captions(load_adapter(base, adapter_dir), session.photo, captions)
    assert list(table.columns) == [
        "#", "caption", "marked true", "vanilla cosine", "vanilla probability", "tuned cosine", "tuned probability",
    ]
    assert table["caption"].tolist() == captions
    assert table["marked true"].tolist() == [True, False, False]
    assert table["vanilla cosine"].tolist() == pytest.approx(expected_base.cosine, abs=1e-4)
    assert table["tuned probability"].tolist() == pytest.approx(expected_tuned.probability, abs=1e-4)
    assert table["vanilla probability"].sum() == pytest.approx(1.0, abs=1e-3)
    assert f"vanilla picks caption {expected_base.best + 1}" in summary
    verdict = compare.judge_ranking(expected_base.cosine, [True, False, False])
    if verdict.all_right:
        assert "ranks every true caption above every false one" in summary
    else:
        assert f"orders {verdict.correct_pairs} of 2 true/false pairs correctly" in summary
    assert [trace.name for trace in figure.data] == ["vanilla", "tuned"]


def test_compare_caches_photo(session):
    compare.compare(session, "a dog\na cat", [], MODEL, NO_ADAPTER)
    hits = SHARED_IMAGE_CACHE.hits
    table, summary, figure = compare.compare(session, "a dog\na cat\na bird", [], MODEL, NO_ADAPTER)
    assert SHARED_IMAGE_CACHE.hits == hits + 1
    assert "tuned cosine" not in table.columns
    assert "No adapter is selected" in summary


def test_compare_rejects_bad_input(session):
    with pytest.raises(gr.Error, match="no captions given"):
        compare.compare(session, "\n \n", [], MODEL, NO_ADAPTER)
    with pytest.raises(gr.Error, match="no photo given"):
        compare.compare(Session(), "a dog", [], MODEL, NO_ADAPTER)
    with pytest.raises(gr.Error, match="neither a folder nor a Hugging Face Hub id"):
        compare.compare(session, "a dog", [], "no such model", NO_ADAPTER)


def test_compare_warns_truncation(session):
    with pytest.warns(UserWarning, match="longer than CLIP's 77 tokens"):
        compare.compare(session, "a dog\n" + " ".join(["dog"] * 90), [], MODEL, NO_ADAPTER)


def test_judge_ranking_counts_pairs():
    verdict = compare.judge_ranking([0.3, 0.1, 0.2], [True, False, True])
    assert (verdict.correct_pairs, verdict.pairs, verdict.top_is_true, verdict.all_right) == (2, 2, True, True)
    verdict = compare.judge_ranking([0.1, 0.3, 0.2], [True, False, True])
    assert (verdict.correct_pairs, verdict.pairs, verdict.top_is_true) == (0, 2, False)
    assert compare.judge_ranking([0.1, 0.2], [True, True]) is None


def test_sync_truth_choices_keeps_marks():
    update = compare.sync_truth_choices("a dog\n\na cat\na dog", ["a cat", "a bird"])
    assert update["choices"] == ["a dog", "a cat"]
    assert update["value"] == ["a cat"]


def test_is_negated_words():
    assert compare.is_negated("A boat with no dog.")
    assert compare.is_negated("The dog isn't on the boat.")
    assert compare.is_negated("A dog on a boat, nothing else.")
    assert not compare.is_negated("A dog on a snowy boat.")


def test_suggest_appends_negations(session):
    text, truth, note = compare.suggest(session, "A man riding skis down a slope.", [], MODEL)
    lines = text.splitlines()
    guess = guess_objects(load_clip(MODEL), session.photo)
    presence, absence = suggest_negations(guess, session.photo, [lines[0]])
    assert lines == ["A man riding skis down a slope.", presence.caption, absence.caption]
    assert guess.present[0] in presence.caption
    assert truth["choices"] == lines
    assert truth["value"] == [lines[0], absence.caption]  # the premise and the absence-negated caption
    assert f"guesses present: **{', '.join(guess.present)}**" in note


def test_suggest_prefers_affirmative_premise(session):
    captions = "A skier with no poles.\nA woman on skis."
    text, truth, _ = compare.suggest(session, captions, ["A skier with no poles.", "A woman on skis."], MODEL)
    lines = text.splitlines()
    assert lines[:2] == ["A skier with no poles.", "A woman on skis."]
    assert len(lines) == 4
    assert all("a woman on skis" in line.lower() for line in lines[2:])


# ---------------------------------------------------------------- Embedding map and Layer analysis


def test_embedding_map_bundled(adapter_dir):
    explore.UMAP_WARMUP.start().wait()
    figure, numbers, note = explore.embedding_map(datasets.BUNDLED, 6, 0, "", MODEL, adapter_dir, Session())
    assert numbers["model"].tolist() == ["vanilla", "tuned"]
    assert numbers["examples"].tolist() == [6, 6]
    assert [annotation.text for annotation in figure.layout.annotations] == ["vanilla", "tuned"]
    assert len(figure.data) == 8
    assert note.startswith("6 captions")

    from analysis.embeddings import embed_examples, sample_examples, summarize_negations

    examples = sample_examples(load_negation_examples(datasets.EXAMPLES_NEGATIONS), 6, 0)
    summary = summarize_negations(embed_examples(load_clip(MODEL), examples), examples)
    assert numbers["mean cos(caption, presence-negated)"][0] == pytest.approx(summary.caption_presence_cosine, abs=1e-4)


def test_embedding_map_typed_captions(session):
    explore.UMAP_WARMUP.start().wait()
    captions = "A man riding skis.\nA skier on a snowy slope."
    figure, numbers, note = explore.embedding_map(explore.COMPARE_SOURCE, 6, 0, captions, MODEL, NO_ADAPTER, session)
    assert numbers["examples"].tolist() == [2]
    assert note.startswith("2 captions")
    assert "and 1 images" in note


def test_embedding_map_uploaded_missing():
    with pytest.raises(gr.Error, match="no data set uploaded"):
        explore.embedding_map(datasets.UPLOADED, 6, 0, "", MODEL, NO_ADAPTER, Session())


def test_layer_analysis_rows(adapter_dir):
    figure, table = explore.layer_analysis(
        "A man with a cat.",
        "A man with a cat.\nA man, but there is no cat.\nA man with no dog.",
        MODEL,
        adapter_dir,
        Session(),
    )
    assert table["negation"].unique().tolist() == ["A man, but there is no cat.", "A man with no dog."]
    assert len(table) == 2 * 5  # two negations over the embedding output and 4 layers
    assert list(table.columns) == ["negation", "layer", "vanilla cosine", "tuned cosine"]
    assert len(figure.data) == 4


def test_layer_analysis_needs_negation():
    with pytest.raises(gr.Error, match="at least one negated caption"):
        explore.layer_analysis("A dog.", "A dog.", MODEL, NO_ADAPTER, Session())


# ---------------------------------------------------------------- Evaluate


def test_evaluate_bundled_matches_library(adapter_dir):
    table, note = evaluation.evaluate(datasets.BUNDLED, ["presence", "mcq"], MODEL, adapter_dir, Session())
    base = load_clip(MODEL)
    presence = evaluate_presence(base, load_negation_examples(datasets.EXAMPLES_NEGATIONS))
    mcq = evaluate_mcq(base, datasets.mcq_items(datasets.BUNDLED, None))
    rows = table.set_index(["benchmark", "metric"])
    assert rows.loc[("presence", "accuracy"), "vanilla (%)"] == pytest.approx(100 * presence["accuracy"], abs=0.05)
    assert rows.loc[("mcq", "accuracy"), "vanilla (%)"] == pytest.approx(100 * mcq["accuracy"], abs=0.05)
    assert "change (points)" in table.columns
    assert note.startswith("Data: example photos (6 COCO photos). presence: 30 items; mcq: 7 items.")
    assert "not measured on held-out photos" in note


def test_evaluate_world_retrieval():
    table, note = evaluation.evaluate(datasets.WORLD, ["retrieval"], MODEL, NO_ADAPTER, Session())
    assert table["metric"].tolist() == ["image-to-text R@1", "image-to-text R@5", "text-to-image R@1", "text-to-image R@5"]
    assert list(table.columns) == ["benchmark", "metric", "vanilla (%)"]
    assert "retrieval: 600 captions" in note


def test_evaluate_rejects_bad_choices(negation_zip):
    with pytest.raises(gr.Error, match="no benchmark chosen"):
        evaluation.evaluate(datasets.BUNDLED, [], MODEL, NO_ADAPTER, Session())
    session = Session()
    finetune.upload_data(str(datasets.EXAMPLES_NEGATIONS), str(negation_zip), session)
    with pytest.raises(gr.Error, match="not multiple choice"):
        evaluation.evaluate(datasets.UPLOADED, ["mcq"], MODEL, NO_ADAPTER, session)


# ---------------------------------------------------------------- Fine-tune


FORM = dict(layers="front", custom_layers="", mode="full", epochs=2, max_steps=3, batch_size=8, learning_rate=1e-4,
            lambda_abs=1.0, lambda_orig=1.0, lambda_text=1.0, margin=0.9, seed=0)


def test_build_train_config_fields():
    config = finetune.build_train_config(data="d.jsonl", image_root=None, model=MODEL, output_dir="out", **FORM)
    assert (config.layers, config.max_steps, config.batch_size, config.margin) == ("front", 3, 8, 0.9)
    custom = dict(FORM, layers="custom", custom_layers="0-1", mode="lora", max_steps=0, lambda_abs=0.0)
    config = finetune.build_train_config(data="d.jsonl", image_root=None, model=MODEL, output_dir="out", **custom)
    assert (config.layers, config.mode, config.max_steps, config.use_absence) == ("0-1", "lora", None, False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layers": "custom", "custom_layers": " "}, "custom layer range is empty"),
        ({"layers": "sideways"}, "layer range must be one of"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"epochs": 1.5}, "epochs must be a whole number"),
        ({"margin": None}, "margin is empty"),
    ],
)
def test_build_train_config_rejects(change, message):
    with pytest.raises(ValueError, match=message):
        finetune.build_train_config(data="d.jsonl", image_root=None, model=MODEL, output_dir="out", **dict(FORM, **change))


def test_run_finetune_bundled(session):
    finetune.request_finetune(session)
    outputs = list(finetune.run_finetune(datasets.BUNDLED, **FORM, model_name=MODEL, session=session))
    status, loss_figure, table, zip_path, picker, session = outputs[-1]
    assert status.startswith("Finished 3 of 3 steps")
    assert table["metric"].tolist() == [metric for metric, _ in finetune.BEFORE_AFTER_METRICS]
    assert picker["value"] == SESSION_ADAPTER
    assert SESSION_ADAPTER in picker["choices"]
    assert Path(session.adapter_dir, "negclip_adapter.json").is_file()
    with zipfile.ZipFile(zip_path) as opened:
        assert {"negclip_adapter.json", "negclip_adapter.safetensors", "README.md"} <= set(opened.namelist())
    assert [trace.name for trace in loss_figure.data][0] == "loss"
    assert len(loss_figure.data[0].x) == 3

    table, summary, _ = compare.compare(session, "A man riding skis.\nNo skis.", [], MODEL, SESSION_ADAPTER)
    assert "tuned cosine" in table.columns
    assert f"adapter `{session.adapter_dir}`" in summary


def test_run_finetune_cancel_keeps_adapter(session):
    finetune.request_finetune(session)
    run = finetune.run_finetune(datasets.BUNDLED, **dict(FORM, max_steps=500), model_name=MODEL, session=session)
    first = next(run)
    while not finetune.JOBS.get(session.id).records:
        first = next(run)
    assert finetune.cancel_finetune(session).startswith("Stopping after step")
    status, _, table, zip_path, picker, session = list(run)[-1]
    assert "stopped early by Cancel" in status
    assert Path(zip_path).is_file()
    assert finetune.JOBS.get(session.id).result.steps < 500


def test_run_finetune_cancelled_in_queue(session):
    finetune.request_finetune(session)
    assert finetune.cancel_finetune(session).startswith("No run of this session is training")
    outputs = list(finetune.run_finetune(datasets.BUNDLED, **FORM, model_name=MODEL, session=session))
    assert outputs[0][0] == "Cancelled before it started."
    assert session.adapter_dir is None


def test_run_finetune_bad_settings(session):
    with pytest.raises(gr.Error, match="custom layer range is empty"):
        list(finetune.run_finetune(datasets.BUNDLED, **dict(FORM, layers="custom"), model_name=MODEL, session=session))
    with pytest.raises(gr.Error, match="names layers \\[?7\\]?"):
        list(finetune.run_finetune(
            datasets.BUNDLED, **dict(FORM, layers="custom", custom_layers="7"), model_name=MODEL, session=session
        ))


def test_delete_session_removes_folder():
    session = Session()
    folder = session.folder
    (folder / "file.txt").write_text("x")
    delete_session(session)
    assert not folder.exists()


# ---------------------------------------------------------------- app.py


def test_parse_arguments_environment(monkeypatch):
    monkeypatch.setenv("NEGCLIP_APP_MODEL", "tiny-random")
    arguments = app.parse_arguments(["--server-port", "7999"])
    assert (arguments.model, arguments.server_port, arguments.server_name) == ("tiny-random", 7999, None)


def test_build_demo_tabs():
    startup = load_startup_model(ModelStore(), MODEL)
    demo = app.build_demo(startup)
    tabs = [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    assert tabs == ["Compare", "Embedding map", "Fine-tune", "Layer analysis", "Evaluate"]
    limits = {
        dependency.fn.__name__: (dependency.concurrency_limit, dependency.concurrency_id)
        for dependency in demo.fns.values()
        if dependency.fn is not None
    }
    assert limits["run_finetune"] == (1, "finetune")


def test_model_status_describes(adapter_dir):
    text = app.model_status(MODEL, adapter_dir, Session())
    assert text.startswith("**vanilla**: a small randomly initialised CLIP")
    assert f"adapter {adapter_dir} (full)" in text
    assert app.model_status(MODEL, "/missing/adapter", Session()).startswith("**Not loaded:** adapter not found")


def test_examples_have_licences():
    licences = (datasets.EXAMPLES_DIR / "LICENSES.md").read_text()
    entries = json.loads(datasets.EXAMPLES_JSON.read_text())
    assert 4 <= len(entries) <= 6
    for entry in entries:
        assert f"`{entry['file']}`" in licences
        assert entry["license_url"] in licences
        assert (datasets.EXAMPLES_DIR / entry["file"]).is_file()
        assert any(item["true"] for item in entry["compare_captions"])
        assert not all(item["true"] for item in entry["compare_captions"])
    assert isinstance(pd.read_csv(datasets.EXAMPLES_MCQ), pd.DataFrame)


def test_space_rejects_typed_server_folders(monkeypatch, tmp_path):
    from negclip.models import ModelLoadError
    from webapp.models import STORE, resolve_adapter

    monkeypatch.setenv("SPACE_ID", "someone/negclip")
    monkeypatch.delenv("NEGCLIP_ALLOW_LOCAL_PATHS", raising=False)
    with pytest.raises(ModelLoadError, match="does not load server folders"):
        STORE.base(str(tmp_path))
    with pytest.raises(AdapterError, match="NEGCLIP_ALLOW_LOCAL_PATHS=1"):
        resolve_adapter("/etc", None)
    assert resolve_adapter("someone/adapter", None) == "someone/adapter"
    assert STORE.base("tiny-random").name == "tiny-random"

    monkeypatch.setenv("NEGCLIP_ALLOW_LOCAL_PATHS", "1")
    assert resolve_adapter(str(tmp_path), None) == str(tmp_path)


# ---------------------------------------------------------------- session cleanup, upload names, layers


def test_session_cleanup_keeps_other_folders(tmp_path, monkeypatch):
    from webapp import session as session_module

    own = Session().folder
    stale = Session().folder
    (stale / session_module.SESSION_MARKER).write_text("999999999")  # no such process
    unrelated = session_module.work_root() / "world-split"
    unrelated.mkdir()
    assert session_module.remove_stale_sessions() == 1
    assert not stale.exists()
    assert own.exists()
    assert unrelated.exists()
    assert session_module.remove_own_sessions() == 1
    assert not own.exists()
    assert unrelated.exists()


def test_main_installs_session_cleanup(monkeypatch):
    import atexit
    import signal

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        app.install_session_cleanup()
        assert signal.getsignal(signal.SIGTERM) is app._stop_on_sigterm
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert registered == [app.remove_own_sessions]
    with pytest.raises(KeyboardInterrupt):
        app._stop_on_sigterm(signal.SIGTERM, None)


def test_set_photo_names_uploaded_file(tmp_path, photo_paths):
    upload = tmp_path / "gradio" / "e53e0123" / "fake.jpg"
    upload.parent.mkdir(parents=True)
    upload.write_text("plain text")
    session = Session(photo=str(photo_paths[0]))
    with pytest.raises(gr.Error) as raised:
        compare.set_photo(str(upload), session)
    assert "not an image file: fake.jpg;" in raised.value.message
    assert str(tmp_path) not in raised.value.message
    assert session.photo is None


def test_rejected_photo_clears_results(tmp_path, photo_paths):
    session = Session(photo=str(photo_paths[0]))
    notes = tmp_path / "notes.txt"
    notes.write_text("plain text")
    preview, table, summary, figure, session = compare.clear_photo(session)
    assert (preview, table, summary, figure) == (None, None, "", None)
    with pytest.raises(gr.Error) as raised:
        compare.set_photo(str(notes), session)
    assert "not an image file: notes.txt" in raised.value.message
    with pytest.raises(gr.Error, match="no photo given"):
        compare.compare(session, "A dog.\nNo dog.", [], MODEL, NO_ADAPTER)


def test_photo_upload_accepts_any_file_type():
    demo = app.build_demo(load_startup_model(ModelStore(), MODEL))
    uploads = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "photo-upload"]
    assert len(uploads) == 1
    assert uploads[0].file_types is None


def test_upload_data_names_uploaded_files(tmp_path, negation_zip):
    broken = tmp_path / "gradio" / "ab12" / "upbroken.jsonl"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"image": "000000177015.jpg"\n')
    session = Session()
    with pytest.raises(gr.Error) as raised:
        finetune.upload_data(str(broken), str(negation_zip), session)
    message = raised.value.message
    assert "upbroken.jsonl" in message
    assert str(tmp_path) not in message
    assert str(session.folder) not in message


def test_run_finetune_range_error_logs_one_line(session, caplog):
    caplog.set_level("WARNING", logger="webapp.finetune")
    form = dict(FORM, layers="custom", custom_layers="0-99")
    with pytest.raises(gr.Error):
        list(finetune.run_finetune(datasets.BUNDLED, **form, model_name=MODEL, session=session))
    records = [record for record in caplog.records if record.name == "webapp.finetune"]
    assert len(records) == 1
    assert records[0].exc_info is None
    assert "Traceback" not in caplog.text


def test_custom_layers_box_selects_custom():
    assert finetune.select_custom_layers(" 0-2 ") == gr.update(value="custom")
    assert finetune.select_custom_layers("") == gr.skip()
    assert finetune.describe_layers("custom", "0-2") == "custom layers 0-2"
    with pytest.warns(UserWarning, match="Custom layers box \\(0-2\\) is ignored"):
        assert finetune.describe_layers("front", "0-2") == "front layers"


def test_run_finetune_status_names_layers(session):
    form = dict(FORM, custom_layers="0")
    with pytest.warns(UserWarning, match="is ignored because"):
        outputs = list(finetune.run_finetune(datasets.BUNDLED, **form, model_name=MODEL, session=session))
    assert "steps of tuning front layers" in outputs[-1][0]

"""End to end on the real COCO photos: negations -> train (tiny-random) -> evaluate base vs tuned -> score."""

import json

import pytest

from negclip.cli import main
from negclip.data import read_negbench_retrieval_csv
from negclip.negations import noun_forms


def _names(category, caption):
    forms = noun_forms(category)
    return forms.singular in caption.lower() or forms.plural in caption.lower()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, shared_data):
    """Run the three commands once; the tests below read what they wrote."""
    coco = shared_data / "coco-val2017-neg"
    out = tmp_path_factory.mktemp("pipeline")
    negations = out / "negations.jsonl"
    assert main([
        "negations",
        "--captions", str(coco / "annotations/captions_val2017.json"),
        "--negbench-csv", str(coco / "negbench/COCO_val_retrieval.csv"),
        "--image-root", str(coco / "images"),
        "--out", str(negations),
        "--captions-per-image", "1",
    ]) == 0
    assert main([
        "train", "--data", str(negations), "--model", "tiny-random", "--max-steps", "4", "--batch-size", "16",
        "--learning-rate", "1e-3", "--eval-fraction", "0.1", "--output-dir", str(out / "run"), "--device", "cpu",
    ]) == 0
    results = out / "results.json"
    assert main([
        "evaluate", "--model", "tiny-random", "--adapter", str(out / "run" / "adapter"),
        "--benchmark", "mcq", "--benchmark", "presence", "--benchmark", "retrieval",
        "--data", str(negations),
        "--mcq", str(coco / "negbench/COCO_val_mcq_llama3.1_rephrased.csv"),
        "--retrieval", str(coco / "negbench/COCO_val_retrieval.csv"),
        "--negated-retrieval", str(coco / "negbench/COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv"),
        "--image-root", str(coco / "images"), "--limit", "60", "--json", str(results), "--device", "cpu",
    ]) == 0
    return {"out": out, "negations": negations, "results": json.loads(results.read_text()), "coco": coco}


def test_negations_file_rows(pipeline):
    rows = [json.loads(line) for line in pipeline["negations"].read_text().splitlines()]
    assert len(rows) == 252  # one caption for each of the 252 labelled photos
    for row in rows:
        assert row["present_object"] in row["objects"]
        assert row["absent_object"] not in row["objects"]
        assert _names(row["present_object"], row["presence_negated"])
        assert _names(row["absent_object"], row["absence_negated"])
        assert row["caption"] != row["presence_negated"]


def test_train_outputs(pipeline):
    run = pipeline["out"] / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4
    assert metrics["train_examples"] + metrics["eval_examples"] == 252
    assert (run / "adapter" / "negclip_adapter.safetensors").is_file()
    assert (run / "train_config.json").is_file()


def test_evaluate_json_shape(pipeline):
    results = pipeline["results"]
    csv_items = read_negbench_retrieval_csv(
        pipeline["coco"] / "negbench/COCO_val_retrieval.csv", pipeline["coco"] / "images"
    )
    expected_captions = sum(len(item.captions) for item in csv_items[:60])  # 5 per COCO photo, one has 6
    assert set(results) == {"mcq", "presence", "retrieval"}
    for side in ("base", "tuned"):
        mcq = results["mcq"][side]
        assert mcq["count"] == 60
        assert set(mcq["by_template"]) == {"positive", "negative", "hybrid"}
        assert 0 <= mcq["accuracy"] <= 1
        assert results["presence"][side]["count"] == 60
        retrieval = results["retrieval"][side]
        assert set(retrieval["image_to_text"]) == {"R@1", "R@5", "R@10"}
        assert set(retrieval["text_to_image"]) == {"R@1", "R@5", "R@10"}
        assert retrieval["captions"] == expected_captions
        assert retrieval["image_to_text"]["R@1"] <= retrieval["image_to_text"]["R@5"] <= retrieval["image_to_text"]["R@10"]
        assert set(retrieval["negated"]["image_to_text"]) == {"R@1", "R@5", "R@10"}
    # A 4-step run at learning rate 1e-3 moves the text embeddings, so some score must move.
    assert results["presence"]["base"] != results["presence"]["tuned"] or results["mcq"]["base"] != results["mcq"]["tuned"]


def test_evaluate_without_adapter_is_flat(pipeline, tmp_path):
    coco = pipeline["coco"]
    path = tmp_path / "flat.json"
    assert main([
        "evaluate", "--model", "tiny-random", "--benchmark", "mcq", "--limit", "8",
        "--mcq", str(coco / "negbench/COCO_val_mcq_llama3.1_rephrased.csv"),
        "--image-root", str(coco / "images"), "--json", str(path),
    ]) == 0
    flat = json.loads(path.read_text())
    assert flat["mcq"]["count"] == 8
    assert "base" not in flat["mcq"]


def test_evaluate_wrong_image_root_message(pipeline, tmp_path, capsys):
    coco = pipeline["coco"]
    code = main([
        "evaluate", "--model", "tiny-random", "--benchmark", "mcq",
        "--mcq", str(coco / "negbench/COCO_val_mcq_llama3.1_rephrased.csv"), "--image-root", str(tmp_path),
    ])
    error = capsys.readouterr().err
    assert code == 2
    assert "--image-root" in error
    assert "000000" in error  # names a path it looked for


def test_score_command_prints_both(pipeline, capsys, photo_paths):
    code = main([
        "score", str(photo_paths[0]), "a photo of food", "a photo with no food",
        "--model", "tiny-random", "--adapter", str(pipeline["out"] / "run" / "adapter"),
    ])
    output = capsys.readouterr().out
    assert code == 0
    assert "base cos" in output
    assert "tuned cos" in output
    assert "base picks:" in output
    assert "tuned picks:" in output


def test_train_missing_data_message(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nothing.jsonl"), "--model", "tiny-random"])
    assert code == 2
    assert "nothing.jsonl" in capsys.readouterr().err


def test_model_offline_message(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["score", "x.jpg", "a dog", "--model", "openai/clip-vit-base-patch32"])
    assert code == 2
    assert "--model <folder>" in capsys.readouterr().err


def test_train_reads_negationclip_json(tmp_path, photo_paths):
    from negclip.sources import load_negation_examples

    images = [{"id": index, "file_name": path.name} for index, path in enumerate(photo_paths[:3])]
    annotations = [
        {"id": 1, "image_id": 0, "caption": "A dog sleeping on a couch.", "updated_caption": "A dog sleeping on a couch, with no cat."},
        {"id": 2, "image_id": 1, "caption": "Two people riding horses.", "updated_caption": "Two people riding horses, and no car."},
        {"id": 3, "image_id": 2, "caption": "A sunny day.", "updated_caption": "A sunny day without any boat."},
    ]
    path = tmp_path / "negationclip.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))

    examples = load_negation_examples(path, image_root=photo_paths[0].parent)

    assert len(examples) == 2  # the third names no COCO category, so it has nothing to negate
    assert examples[0].absence_negated == "A dog sleeping on a couch, with no cat."
    assert examples[0].present_object in {"dog", "couch"}
    assert examples[0].presence_negated != examples[0].caption
    assert set(examples[1].objects) == {"person", "horse"}


def test_negations_without_labels_fails(tmp_path, coco_neg, capsys):
    code = main([
        "negations", "--captions", str(coco_neg / "annotations/captions_val2017.json"),
        "--image-root", str(coco_neg / "images"), "--out", str(tmp_path / "out.jsonl"),
    ])
    assert code == 2
    assert "--instances" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_evaluate_rejects_zero_limit(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--benchmark", "mcq", "--limit", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_missing_local_adapter_not_sent_to_hub(tmp_path, capsys, photo_paths, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)  # "runs/nothing" also reads as a Hub id owner/name
    code = main(["score", str(photo_paths[0]), "a dog", "--model", "tiny-random", "--adapter", "runs/nothing"])
    assert code == 2
    assert "adapter folder not found" in capsys.readouterr().err

"""Tests for negclip.benchmarks: the published files' format and counts, and each benchmark end to end on
small files of the same shape built over the shared COCO photos, scored with the tiny-random model."""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from negclip.benchmarks import ccneg, valse
from negclip.benchmarks.negrefcocog import (
    TIE_POLICY,
    crop_box,
    is_strict_hit,
    load_negrefcocog,
    read_negrefcocog,
    score_negrefcocog,
    shuffled_orders,
)
from negclip.benchmarks.zeroshot import (
    ZeroshotItem,
    average_precision,
    compare_zeroshot,
    evaluate_zeroshot,
    load_zeroshot,
    merge_by_image,
    read_labelled_images,
    score_zeroshot,
    zeroshot_guard,
)
from negclip.data import CCNEG_EVAL_SIZE, DataFormatError, ImageRecord, MissingImagesError, NegationExample
from negclip.evaluate import BENCHMARKS, format_table
from negclip.images import ImageLoadError
from negclip.models import load_clip

MY_BENCHMARKS = ("negrefcocog", "ccneg", "valse-existence", "zeroshot")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clip():
    torch.set_num_threads(1)
    return load_clip("tiny-random")


@pytest.fixture(scope="module")
def published(shared_data: Path) -> Path:
    folder = shared_data / "benchmark-files"
    if not folder.is_dir():
        pytest.skip(f"published benchmark files not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def images_dir(coco_neg: Path) -> Path:
    return coco_neg / "images"


@pytest.fixture(scope="module")
def instances_path(coco_neg: Path) -> Path:
    return coco_neg / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def coco_boxes(instances_path: Path) -> list[dict]:
    """Per annotated photo: file name, size, and (category, [x, y, width, height]) largest first."""
    data = json.loads(instances_path.read_text())
    names = {category["id"]: category["name"] for category in data["categories"]}
    photos = {image["id"]: {"file": image["file_name"], "width": image["width"], "height": image["height"], "boxes": []}
              for image in data["images"]}
    for annotation in sorted(data["annotations"], key=lambda a: -a["area"]):
        photos[annotation["image_id"]]["boxes"].append((names[annotation["category_id"]], annotation["bbox"]))
    return list(photos.values())


def negrefcocog_items(coco_boxes: list[dict]) -> list[dict]:
    """NegRefCOCOg-shaped items: the largest object of a photo against its largest object of another
    category, the reference first as in the published file."""
    items = []
    for photo in coco_boxes:
        category, box = photo["boxes"][0]
        other = next(((name, b) for name, b in photo["boxes"] if name != category), None)
        if other is None:
            continue
        items.append({"image": photo["file"], "phrase": f"a {category} that is not a {other[0]}",
                      "ref_bbox": box, "bbox_list": [box, other[1]]})
    return items


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def write_unreadable(path: Path) -> Path:
    path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    return path


# ---------------------------------------------------------------- registry and command line


def test_registry_lists_benchmarks():
    for name in MY_BENCHMARKS:
        assert name in BENCHMARKS
        assert BENCHMARKS[name].add_arguments is not None


def test_registry_options_default():
    parser = argparse.ArgumentParser()
    for name in MY_BENCHMARKS:
        BENCHMARKS[name].add_arguments(parser)
    args = parser.parse_args([])
    assert args.ccneg_eval_size == CCNEG_EVAL_SIZE == 40_000
    assert args.valse_min_votes == 2
    assert args.negrefcocog_seed == 0


def test_registry_missing_path_message():
    with pytest.raises(ValueError, match="--negrefcocog PATH"):
        BENCHMARKS["negrefcocog"].load(argparse.Namespace(image_root=None, limit=None))
    with pytest.raises(ValueError, match="--zeroshot-data PATH"):
        BENCHMARKS["zeroshot"].load(argparse.Namespace())


def test_cli_evaluate_writes_json(tmp_path, coco_boxes, images_dir, instances_path, capsys):
    from negclip.cli import main

    data_file = write_json(tmp_path / "NegRefCOCOg.json", negrefcocog_items(coco_boxes))
    out = tmp_path / "results.json"
    code = main([
        "evaluate", "--model", "tiny-random", "--device", "cpu", "--image-root", str(images_dir),
        "--benchmark", "negrefcocog", "--negrefcocog", str(data_file),
        "--benchmark", "zeroshot", "--zeroshot-data", str(instances_path),
        "--limit", "10", "--json", str(out),
    ])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["negrefcocog"]["count"] == 10
    assert results["negrefcocog"]["skipped"] == 0
    assert results["negrefcocog"]["tie_policy"] == TIE_POLICY
    assert results["zeroshot"]["count"] == 10
    printed = capsys.readouterr().out
    assert "negrefcocog" in printed
    assert "mean average precision" in printed


def test_table_base_and_tuned(clip, tmp_path, coco_boxes, images_dir):
    data = load_negrefcocog(write_json(tmp_path / "n.json", negrefcocog_items(coco_boxes)), images_dir, limit=6)
    result = {"base": score_negrefcocog(clip, data), "tuned": score_negrefcocog(clip, data)}
    table = format_table({"negrefcocog": result}, with_tuned=True)
    assert "accuracy" in table
    assert "+0.0" in table


# ---------------------------------------------------------------- NegRefCOCOg


def test_negrefcocog_published_counts(published):
    items = read_negrefcocog(published / "NegRefCOCOg.json")
    assert len(items) == 440
    assert len({item.image for item in items}) == 402
    assert all(len(item.boxes) == 2 for item in items)
    assert all(item.reference_index == 0 for item in items)
    assert all(item.phrase for item in items)


def test_negrefcocog_published_missing_images(published, tmp_path):
    with pytest.raises(MissingImagesError) as error:
        load_negrefcocog(published / "NegRefCOCOg.json", tmp_path)
    message = str(error.value)
    assert "402 of 402 images" in message
    assert str(tmp_path) in message
    assert "--image-root" in message


def test_shuffled_orders_move_reference(published):
    items = read_negrefcocog(published / "NegRefCOCOg.json")
    orders = shuffled_orders(items, seed=0)
    first = sum(order.index(item.reference_index) == 0 for item, order in zip(items, orders))
    assert 0.4 < first / len(items) < 0.6
    assert shuffled_orders(items, seed=0) == orders
    assert shuffled_orders(items, seed=1) != orders


def test_negrefcocog_end_to_end(clip, tmp_path, coco_boxes, images_dir):
    items = negrefcocog_items(coco_boxes)
    photo = next(p for p in coco_boxes if p["file"] == items[0]["image"])
    width, height = photo["width"], photo["height"]
    bad = dict(items[0], phrase="a box with no width", bbox_list=[items[0]["ref_bbox"], [10, 10, 0, 50]])
    past_border = [width - 50, height - 40, 200, 200]
    clamped = dict(items[1], ref_bbox=past_border, bbox_list=[past_border, items[1]["bbox_list"][1]])
    missing = dict(items[2], image="000000999999.jpg")
    write_unreadable(tmp_path / "broken.jpg")
    unreadable = dict(items[3], image="broken.jpg")
    path = write_json(tmp_path / "NegRefCOCOg.json", items + [bad, clamped, missing, unreadable])

    result = score_negrefcocog(clip, load_negrefcocog(path, images_dir))

    assert result["count"] == len(items) + 1
    assert result["skipped"] == 3
    assert result["skipped_by_reason"] == {"bad_box": 1, "missing_image": 1, "unreadable_image": 1}
    assert result["bad_boxes"] == 1
    assert result["clamped_boxes"] == 1
    assert result["tie_policy"] == TIE_POLICY
    assert result["shuffled"] is True
    assert result["chance_accuracy"] == 0.5
    assert 0 <= result["accuracy"] <= 1


def test_negrefcocog_coco_2014_names(clip, tmp_path, coco_boxes, images_dir):
    items = [dict(item, image=f"COCO_train2014_{item['image']}") for item in negrefcocog_items(coco_boxes)]
    data = load_negrefcocog(write_json(tmp_path / "n.json", items), images_dir)
    assert len(data.items) == len(items)
    assert data.skipped == {}
    assert all(Path(item.image).parent == images_dir for item in data.items)


def test_negrefcocog_own_image_root(tmp_path, coco_boxes, images_dir):
    path = write_json(tmp_path / "n.json", negrefcocog_items(coco_boxes))
    args = argparse.Namespace(negrefcocog=str(path), negrefcocog_image_root=str(images_dir),
                              image_root=str(tmp_path / "elsewhere"), limit=4, negrefcocog_seed=None)
    data = BENCHMARKS["negrefcocog"].load(args)
    assert len(data.items) == 4
    assert data.seed == 0


def test_negrefcocog_repeatable(clip, tmp_path, coco_boxes, images_dir):
    data = load_negrefcocog(write_json(tmp_path / "n.json", negrefcocog_items(coco_boxes)), images_dir, seed=3)
    assert score_negrefcocog(clip, data) == score_negrefcocog(clip, data)


def test_negrefcocog_identical_boxes_miss(clip, tmp_path, coco_boxes, images_dir):
    # Two copies of the reference box crop the same pixels, so the scores tie exactly. An argmax that
    # resolves ties to index 0 would call every item a hit.
    items = [dict(item, bbox_list=[item["ref_bbox"], list(item["ref_bbox"])]) for item in negrefcocog_items(coco_boxes)]
    result = score_negrefcocog(clip, load_negrefcocog(write_json(tmp_path / "n.json", items), images_dir))
    assert result["count"] == len(items)
    assert result["ties"] == len(items)
    assert result["accuracy"] == 0.0


def test_strict_hit_cases():
    assert is_strict_hit(torch.tensor([0.6, 0.5]), 0)
    assert not is_strict_hit(torch.tensor([0.5, 0.6]), 0)
    assert not is_strict_hit(torch.tensor([0.5, 0.5]), 0)
    assert not is_strict_hit(torch.tensor([0.5, 0.5]), 1)
    assert is_strict_hit(torch.tensor([0.1, 0.5, 0.2]), 1)


@pytest.mark.parametrize(
    ("box", "expected_size", "expected_clamped"),
    [
        ([10, 20, 30, 40], (30, 40), False),
        ([10.4, 20.6, 29.9, 40.2], (30, 40), False),
        ([-10, -10, 30, 40], (20, 30), True),
        ([90, 90, 50, 50], (10, 10), True),
        ([150, 150, 20, 20], None, True),
        ([10, 10, 0, 20], None, False),
        ([10, 10, 20, -5], None, False),
        ([math.nan, 10, 20, 20], None, False),
        ([10, 10, math.inf, 20], None, False),
    ],
)
def test_crop_box_cases(box, expected_size, expected_clamped):
    image = Image.new("RGB", (100, 100))
    crop, clamped = crop_box(image, box)
    assert clamped == expected_clamped
    if expected_size is None:
        assert crop is None
    else:
        assert crop.size == expected_size


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"ref_bbox": [1, 2, 3, 4]}, "is not one of 'bbox_list'"),
        ({"bbox_list": [[0, 0, 10, 10]]}, "at least 2 boxes"),
        ({"ref_bbox": [0, 0, 10]}, "[x, y, width, height]"),
        ({"phrase": ""}, "'phrase' must be a non-empty string"),
        ({"image": None}, "'image' must be a non-empty string"),
    ],
)
def test_negrefcocog_invalid_item(tmp_path, change, problem):
    item = {"image": "a.jpg", "phrase": "a cat", "ref_bbox": [0, 0, 10, 10], "bbox_list": [[0, 0, 10, 10], [5, 5, 10, 10]]}
    path = write_json(tmp_path / "n.json", [item, dict(item, **change)])
    with pytest.raises(DataFormatError, match="item 1") as error:
        read_negrefcocog(path)
    assert problem in str(error.value)


# ---------------------------------------------------------------- CC-Neg


def write_ccneg(path: Path, image_paths: list[str]) -> Path:
    annotations = [
        {"json": {"caption": f"caption {index}"}, "sop_data": {"negative-prompt": f"not caption {index}"}}
        for index in range(len(image_paths))
    ]
    torch.save({"image_paths": image_paths, "annotations": annotations}, path)
    return path


def test_ccneg_eval_split_last_items(clip, tmp_path, photo_paths, images_dir):
    names = [f"cc3m/{photo.name}" for photo in photo_paths[:12]]
    names[10] = "cc3m/000000999999.jpg"
    path = write_ccneg(tmp_path / "ccneg_preprocessed.pt", names)

    data = ccneg.load_ccneg(path, images_dir, eval_size=8)

    assert [item.caption for item in data.items] == [f"caption {index}" for index in (4, 5, 6, 7, 8, 9, 11)]
    result = ccneg.score_ccneg(clip, data)
    assert result["count"] == 7
    assert result["skipped"] == 1
    assert result["skipped_by_reason"] == {"missing_image": 1}
    assert 0 <= result["accuracy"] <= 1


def test_ccneg_limit_and_unreadable(clip, tmp_path, photo_paths, images_dir):
    names = [photo.name for photo in photo_paths[:6]] + ["broken.jpg"]
    write_unreadable(tmp_path / "broken.jpg")
    path = write_ccneg(tmp_path / "ccneg_preprocessed.pt", names)
    result = ccneg.score_ccneg(clip, ccneg.load_ccneg(path, images_dir, eval_size=3))
    assert result["count"] == 2
    assert result["skipped_by_reason"] == {"unreadable_image": 1}
    limited = ccneg.score_ccneg(clip, ccneg.load_ccneg(path, images_dir, limit=2, eval_size=3))
    assert limited["count"] == 2
    assert limited["skipped"] == 0


# ---------------------------------------------------------------- VALSE existence


def valse_entry(image: str, provenance: str, votes: int, index: int) -> dict:
    caption, foil = ("There are no dogs.", "There are dogs.")
    if provenance == "something_to_zero":
        caption, foil = foil, caption
    return {
        "dataset": "visual7w", "dataset_idx": str(index), "image_file": image, "linguistic_phenomena": "existence",
        "caption": caption, "foil": foil, "provenance_of_foils": provenance,
        "mturk": {"foil": 3 - votes, "caption": votes, "other": 0},
    }


def test_valse_published_counts(published):
    items = valse.read_valse(published / "existence.json")
    assert len(items) == 534
    kept = [item for item in items if item.caption_votes >= 2]
    assert len(kept) == 505
    assert sum(item.provenance == "zero_to_something" for item in kept) == 256
    assert sum(item.provenance == "something_to_zero" for item in kept) == 249
    assert all(item.image.startswith("v7w_") for item in items)


def test_valse_published_missing_images(published, tmp_path):
    with pytest.raises(MissingImagesError, match="505 of 505 images") as error:
        valse.load_valse(published / "existence.json", tmp_path)
    assert "--image-root" in str(error.value)


def test_valse_end_to_end(clip, tmp_path, photo_paths, images_dir):
    provenances = ["zero_to_something", "something_to_zero"]
    entries = {
        f"existence_{index}": valse_entry(photo.name, provenances[index % 2], votes=3 if index < 8 else 1, index=index)
        for index, photo in enumerate(photo_paths[:10])
    }
    entries["existence_missing"] = valse_entry("v7w_0.jpg", "zero_to_something", votes=2, index=99)
    path = write_json(tmp_path / "existence.json", entries)

    result = valse.score_valse(clip, valse.load_valse(path, images_dir))

    assert result["count"] == 8
    assert result["excluded_by_votes"] == 2
    assert result["skipped_by_reason"] == {"missing_image": 1}
    assert result["count_by_provenance"] == {"something_to_zero": 4, "zero_to_something": 4}
    assert set(result["by_provenance"]) == set(provenances)
    assert 0 <= result["accuracy"] <= 1


def test_valse_unreadable_majority(clip, tmp_path, photo_paths):
    entries = {f"e{index}": valse_entry(f"broken{index}.jpg", "zero_to_something", 3, index) for index in range(3)}
    entries["e_good"] = valse_entry(str(photo_paths[0]), "zero_to_something", 3, 9)
    for index in range(3):
        write_unreadable(tmp_path / f"broken{index}.jpg")
    data = valse.load_valse(write_json(tmp_path / "existence.json", entries))
    with pytest.raises(ImageLoadError, match="3 of 4 images could not be read"):
        valse.score_valse(clip, data)


def test_valse_missing_votes(tmp_path):
    entry = valse_entry("a.jpg", "zero_to_something", 3, 0)
    del entry["mturk"]
    with pytest.raises(DataFormatError, match="item 'e0'"):
        valse.read_valse(write_json(tmp_path / "existence.json", {"e0": entry}))


# ---------------------------------------------------------------- zero-shot recognition


def test_average_precision_hand_values():
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([True, False, True, False])) == pytest.approx(
        (1 / 1 + 2 / 3) / 2
    )
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([False, True])) == pytest.approx(0.5)
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == pytest.approx(0.5)
    assert average_precision(torch.tensor([0.1, 0.2]), torch.tensor([False, False])) is None


def test_average_precision_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 6, (30,), generator=generator).float()  # few values, so many ties
        labels = torch.rand(30, generator=generator) < 0.3
        if labels.any():
            expected = metrics.average_precision_score(labels.numpy(), scores.numpy())
            assert average_precision(scores, labels) == pytest.approx(expected)


def test_zeroshot_coco_instances(clip, instances_path, images_dir):
    data = load_zeroshot(instances_path, images_dir)
    assert len(data.items) == 37
    assert len(data.categories) == 80
    result = score_zeroshot(clip, data)
    assert result["count"] == 37
    assert result["skipped"] == 0
    assert result["categories"] == 80
    assert result["categories_present"] == 57
    assert 0 < result["mean_average_precision"] <= 1
    assert 0 <= result["top1_hit_rate"] <= 1


def test_zeroshot_ties_never_help(clip, instances_path, images_dir):
    # With a zeroed text projection every prompt embeds to zero, so all categories tie for every image.
    import copy
    import dataclasses

    flat = dataclasses.replace(clip, model=copy.deepcopy(clip.model))
    torch.nn.init.zeros_(flat.model.text_projection.weight)
    data = load_zeroshot(instances_path, images_dir)
    result = score_zeroshot(flat, data)
    assert result["top1_hit_rate"] == 0.0
    positives = {}
    for item in data.items:
        for name in item.objects:
            positives[name] = positives.get(name, 0) + 1
    expected = sum(count / len(data.items) for count in positives.values()) / len(positives)
    assert result["mean_average_precision"] == pytest.approx(expected)


def test_zeroshot_negbench_csv(coco_neg):
    items, categories = read_labelled_images(coco_neg / "negbench" / "COCO_val_retrieval.csv")
    assert len(items) == 252
    assert categories == sorted(categories)
    assert "person" in categories
    assert all(item.objects for item in items)


def test_zeroshot_no_labels_skipped(clip, photo_paths):
    records = [ZeroshotItem(str(photo_paths[0]), ["dog"]), ZeroshotItem(str(photo_paths[1]), ["cat"]),
               ZeroshotItem(str(photo_paths[2]), [])]
    result = evaluate_zeroshot(clip, records)
    assert result["count"] == 2
    assert result["skipped_by_reason"] == {"no_labels": 1}
    assert result["categories"] == 2


def test_merge_by_image_examples():
    examples = [
        NegationExample("a.jpg", "c1", "p1", "a1", "dog", "cat", ["dog", "person"], ["cat"]),
        NegationExample("a.jpg", "c2", "p2", "a2", "person", "cat", ["person", "frisbee"], ["cat"]),
        NegationExample("b.jpg", "c3", "p3", "a3", "car", "bus", ["car"], ["bus"]),
    ]
    merged = merge_by_image(examples)
    assert merged == [ZeroshotItem("a.jpg", ["dog", "person", "frisbee"]), ZeroshotItem("b.jpg", ["car"])]


def test_guard_same_model_no_warning(clip, photo_paths):
    records = [ImageRecord(str(photo_paths[index]), [], objects) for index, objects in
               enumerate([["person", "dog"], ["car"], ["person"], ["pizza", "dining table"]])]
    check = zeroshot_guard(clip, clip, records, max_drop_points=0.0)
    assert check.drop_points == {"mean_average_precision": 0.0, "top1_hit_rate": 0.0}
    assert check.warning is None
    assert check.base["count"] == 4


def test_guard_changed_model_consistent(clip, photo_paths):
    import copy
    import dataclasses

    tuned = dataclasses.replace(clip, model=copy.deepcopy(clip.model), adapter="negated projection")
    with torch.no_grad():
        tuned.model.text_projection.weight.neg_()
    records = [ZeroshotItem(str(photo), objects) for photo, objects in
               zip(photo_paths[:6], [["person"], ["dog"], ["person", "car"], ["cat"], ["dog"], ["car"]])]
    check = zeroshot_guard(clip, tuned, records, max_drop_points=1.0)
    for key in ("mean_average_precision", "top1_hit_rate"):
        assert check.drop_points[key] == pytest.approx(100 * (check.base[key] - check.tuned[key]))
    lost = any(drop > 1.0 for drop in check.drop_points.values())
    assert (check.warning is not None) == lost


def test_compare_zeroshot_warning():
    base = {"mean_average_precision": 0.40, "top1_hit_rate": 0.60, "count": 25}
    tuned = {"mean_average_precision": 0.30, "top1_hit_rate": 0.58, "count": 25}
    check = compare_zeroshot(base, tuned, max_drop_points=5.0)
    assert check.drop_points["mean_average_precision"] == pytest.approx(10.0)
    assert check.drop_points["top1_hit_rate"] == pytest.approx(2.0)
    assert "mean average precision fell by 10.0 points (40.0 to 30.0)" in check.warning
    assert "top-1" not in check.warning
    assert "25 images" in check.warning


def test_compare_zeroshot_within_limit():
    base = {"mean_average_precision": 0.40, "top1_hit_rate": 0.60, "count": 25}
    tuned = {"mean_average_precision": 0.36, "top1_hit_rate": 0.66, "count": 25}
    assert compare_zeroshot(base, tuned, max_drop_points=5.0).warning is None


def test_compare_zeroshot_unchecked():
    empty = {"mean_average_precision": None, "top1_hit_rate": None, "count": 0, "categories": 3,
             "skipped_by_reason": {"no_labels": 4}}
    check = compare_zeroshot(empty, empty)
    assert check.warning is None
    assert "no_labels" in check.unchecked_reason
    with pytest.raises(ValueError, match="max_drop_points"):
        compare_zeroshot(empty, empty, max_drop_points=-1)


def test_image_chunks_cover_set(clip, photo_paths, monkeypatch):
    # Scoring in chunks must give the same result as scoring at once.
    records = [ZeroshotItem(str(photo), [random.Random(index).choice(["a", "b", "c"])])
               for index, photo in enumerate(photo_paths[:9])]
    whole = evaluate_zeroshot(clip, records)
    monkeypatch.setattr("negclip.benchmarks.common.IMAGE_CHUNK", 2)
    assert evaluate_zeroshot(clip, records) == whole

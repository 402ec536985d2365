"""Tests for negclip.data: readers on the real COCO/NegBench files, path resolution and malformed input."""

import json
import os
from pathlib import Path

import pytest

from negclip.data import (
    CcNegItem,
    DataFormatError,
    ImageRecord,
    McqItem,
    MissingImagesError,
    NegationClipCaption,
    NegationExample,
    RetrievalItem,
    candidate_image_paths,
    load_dataset_file,
    read_ccneg,
    read_coco,
    read_jsonl,
    read_negation_csv,
    read_negationclip_json,
    read_negbench_mcq_csv,
    read_negbench_retrieval_csv,
    read_negbench_retrieval_records,
    resolve_image_path,
    resolve_item_images,
    retrieval_items,
    write_jsonl,
)

NEGBENCH_PATH = "data/coco/images/val2017/000000577539.jpg"
RETRIEVAL_HEADER = "positive_objects,negative_objects,filepath,image_id,captions\n"
CCNEG_PREFIX = "/workspace/datasets/cc3m/cc3m_subset_images_extracted_final"


class _Opaque:
    """A class that torch.load(weights_only=True) must not unpickle."""


@pytest.fixture(scope="module")
def images(coco_neg: Path) -> Path:
    return coco_neg / "images"


@pytest.fixture(scope="module")
def captions_json(coco_neg: Path) -> Path:
    return coco_neg / "annotations" / "captions_val2017.json"


@pytest.fixture(scope="module")
def instances_json(coco_neg: Path) -> Path:
    return coco_neg / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def retrieval_csv(coco_neg: Path) -> Path:
    return coco_neg / "negbench" / "COCO_val_retrieval.csv"


@pytest.fixture(scope="module")
def mcq_csv(coco_neg: Path) -> Path:
    return coco_neg / "negbench" / "COCO_val_mcq_llama3.1_rephrased.csv"


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def example(image: str, caption: str = "A dog on a couch.") -> NegationExample:
    return NegationExample(
        image=image,
        caption=caption,
        presence_negated="A dog on a couch, but there is no dog.",
        absence_negated="A dog on a couch, but there is no fork.",
        present_object="dog",
        absent_object="fork",
        objects=["dog", "couch"],
        absent_objects=["fork", "cup"],
        image_id="1",
    )


# ---------------------------------------------------------------------------------------------------------
# COCO


def test_read_coco_instance_labels(captions_json, instances_json, images):
    records = read_coco(captions_json, instances_json, images)

    assert len(records) == 252
    assert sum(1 for record in records if record.objects) == 37
    record = next(record for record in records if record.image_id == "349860")
    assert record.image == str(images / "000000349860.jpg")
    assert record.objects == ["car", "person", "bench", "skateboard"]
    assert record.absent_objects == []
    assert record.captions[2] == "A man has jumped a ramp with his skateboard."
    assert len(record.captions) == 5


def test_read_coco_caption_counts(captions_json, images):
    records = read_coco(captions_json, image_root=images)

    counts = {record.image_id: len(record.captions) for record in records}
    assert counts["96493"] == 6
    assert sum(counts.values()) == 1261
    assert all(record.objects == [] for record in records)


def test_read_coco_negbench_labels(captions_json, retrieval_csv, images):
    records = read_coco(captions_json, image_root=images, negbench_retrieval_csv=retrieval_csv)

    assert len(records) == 252
    assert all(record.objects for record in records)
    first = records[0]
    assert first.image_id == "577539"
    assert first.image == str(images / "000000577539.jpg")
    assert first.objects == ["person", "bowl", "banana"]
    assert first.absent_objects == ["chair", "dining table", "car"]


def test_read_coco_both_label_sources(captions_json, instances_json, retrieval_csv, images):
    records = read_coco(captions_json, instances_json, images, retrieval_csv)

    record = next(record for record in records if record.image_id == "349860")
    assert record.objects == ["car", "person", "bench", "skateboard"]
    assert record.absent_objects == ["chair", "handbag", "truck"]


def test_read_coco_matches_csv_by_file_name(captions_json, images, tmp_path):
    csv_path = write_text(
        tmp_path / "labels.csv",
        RETRIEVAL_HEADER + f"\"['dog']\",\"['cat']\",elsewhere/000000577539.jpg,,\"['A caption.']\"\n",
    )

    records = read_coco(captions_json, image_root=images, negbench_retrieval_csv=csv_path)

    assert records[0].objects == ["dog"]
    assert records[0].absent_objects == ["cat"]
    assert sum(1 for record in records if record.objects) == 1


def test_read_coco_images_without_root(captions_json):
    with pytest.raises(MissingImagesError) as caught:
        read_coco(captions_json)

    assert caught.value.image_count == 252
    assert len(caught.value.missing) == 252


def test_read_coco_missing_key(tmp_path):
    path = write_text(tmp_path / "captions.json", json.dumps({"images": [{"id": 1}], "annotations": []}))

    with pytest.raises(DataFormatError, match=r"images\[0\]: missing key 'file_name'"):
        read_coco(path)


def test_read_coco_invalid_json(tmp_path):
    path = write_text(tmp_path / "captions.json", '{"images": [],\n "annotations": [}')

    with pytest.raises(DataFormatError) as caught:
        read_coco(path)

    assert caught.value.line == 2
    assert "invalid JSON" in str(caught.value)


# ---------------------------------------------------------------------------------------------------------
# NegBench CSVs


def test_retrieval_csv_rows(retrieval_csv, images):
    items = read_negbench_retrieval_csv(retrieval_csv, images)

    assert len(items) == 252
    assert isinstance(items[0], RetrievalItem)
    assert items[0].image == str(images / "000000577539.jpg")
    assert items[0].captions[1] == "Bananas, marshmellows, chocolate chips and sprinkles in a bowl"
    assert len(items[0].captions) == 5


def test_retrieval_csv_records(retrieval_csv, images):
    records = read_negbench_retrieval_records(retrieval_csv, images)

    assert len(records) == 252
    record = next(record for record in records if record.image_id == "544519")
    assert record.objects == ["person", "toothbrush"]
    assert record.absent_objects == ["chair", "car", "handbag"]
    assert record.captions[0] == "An Asian child brushes their teeth with a blue toothbrush."
    assert retrieval_items(records)[0].captions == records[0].captions


def test_negated_retrieval_csv(coco_neg, images):
    path = coco_neg / "negbench" / "COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv"

    records = read_negbench_retrieval_records(path, images)

    assert len(records) == 252
    assert records[0].captions[1] == (
        "A bowl filled with bananas, marshmallows, chocolate chips, and sprinkles is the focus, "
        "with no chair in sight."
    )


def test_mcq_csv_rows(mcq_csv, images):
    items = read_negbench_mcq_csv(mcq_csv, images)

    assert len(items) == 344
    assert items[1] == McqItem(
        image=str(images / "000000349860.jpg"),
        captions=[
            "There is no truck in this image.",
            "This image features a truck, but does not include a bench.",
            "This image features a truck.",
            "A bench is not included in this image.",
        ],
        correct_index=0,
        template="negative",
    )
    templates = [item.template for item in items]
    assert templates.count("positive") == 123
    assert templates.count("negative") == 106
    assert templates.count("hybrid") == 115


def test_mcq_csv_bad_answer(tmp_path, images):
    header = "image_path,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template\n"
    path = write_text(tmp_path / "mcq.csv", header + f"{NEGBENCH_PATH},4,a,b,c,d,positive\n")

    with pytest.raises(DataFormatError) as caught:
        read_negbench_mcq_csv(path, images)

    assert caught.value.line == 2
    assert caught.value.column == "correct_answer"
    assert "from 0 to 3" in str(caught.value)


def test_mcq_csv_without_template(tmp_path, images):
    path = write_text(tmp_path / "mcq.csv", f"image_path,correct_answer,caption_0,caption_1\n{NEGBENCH_PATH},1,a,b\n")

    items = read_negbench_mcq_csv(path, images)

    assert items == [McqItem(str(images / "000000577539.jpg"), ["a", "b"], 1, "unspecified")]


def test_csv_missing_column(tmp_path, images):
    path = write_text(tmp_path / "retrieval.csv", "positive_objects,filepath,image_id,captions\n")

    with pytest.raises(DataFormatError) as caught:
        read_negbench_retrieval_csv(path, images)

    assert "missing column(s) negative_objects" in str(caught.value)
    assert caught.value.line == 1


def test_csv_bad_list_string(tmp_path, images):
    row = f"\"['person'\",\"['car']\",{NEGBENCH_PATH},577539,\"['A caption.']\"\n"
    path = write_text(tmp_path / "retrieval.csv", RETRIEVAL_HEADER + row)

    with pytest.raises(DataFormatError) as caught:
        read_negbench_retrieval_csv(path, images)

    assert caught.value.line == 2
    assert caught.value.column == "positive_objects"
    assert "invalid Python list of strings" in str(caught.value)


def test_csv_list_of_non_strings(tmp_path, images):
    row = f"\"['person']\",\"['car']\",{NEGBENCH_PATH},577539,\"[1, 2]\"\n"
    path = write_text(tmp_path / "retrieval.csv", RETRIEVAL_HEADER + row)

    with pytest.raises(DataFormatError, match="expected a list of strings") as caught:
        read_negbench_retrieval_csv(path, images)

    assert caught.value.column == "captions"


def test_csv_code_not_evaluated(tmp_path, images):
    row = f"\"['person']\",\"__import__('os').getcwd()\",{NEGBENCH_PATH},577539,\"['A caption.']\"\n"
    path = write_text(tmp_path / "retrieval.csv", RETRIEVAL_HEADER + row)

    with pytest.raises(DataFormatError) as caught:
        read_negbench_retrieval_csv(path, images)

    assert caught.value.column == "negative_objects"


def test_csv_empty_caption(tmp_path, images):
    row = f"\"['person']\",\"['car']\",{NEGBENCH_PATH},577539,\"['A caption.', '  ']\"\n"
    path = write_text(tmp_path / "retrieval.csv", RETRIEVAL_HEADER + row)

    with pytest.raises(DataFormatError, match="caption 1 is empty") as caught:
        read_negbench_retrieval_csv(path, images)

    assert caught.value.line == 2


def test_csv_row_too_long(tmp_path, images):
    row = f"\"['person']\",\"['car']\",{NEGBENCH_PATH},577539,\"['A caption.']\",surplus\n"
    path = write_text(tmp_path / "retrieval.csv", RETRIEVAL_HEADER + "\n" + row)

    with pytest.raises(DataFormatError, match="more field") as caught:
        read_negbench_retrieval_csv(path, images)

    assert caught.value.line == 3


# ---------------------------------------------------------------------------------------------------------
# Image paths


def test_resolve_negbench_path(images):
    assert resolve_image_path(NEGBENCH_PATH, images) == images / "000000577539.jpg"


def test_resolve_path_order(images, tmp_path):
    (tmp_path / "val2017").mkdir()
    nested = tmp_path / "val2017" / "000000577539.jpg"
    nested.write_bytes(b"")

    assert resolve_image_path("x/val2017/000000577539.jpg", tmp_path) == nested
    assert resolve_image_path(nested, images) == nested
    assert resolve_image_path("val2017/000000577539.jpg", base_dir=tmp_path) == nested
    assert resolve_image_path("other/000000577539.jpg", images, base_dir=tmp_path) == images / "000000577539.jpg"


def test_candidate_paths_absolute(tmp_path):
    candidates = candidate_image_paths(f"{CCNEG_PREFIX}/a.jpg", tmp_path)

    assert candidates == [
        Path(CCNEG_PREFIX) / "a.jpg",
        tmp_path / "a.jpg",
        tmp_path / "cc3m_subset_images_extracted_final" / "a.jpg",
    ]


def test_resolve_missing_image(tmp_path):
    with pytest.raises(MissingImagesError) as caught:
        resolve_image_path(NEGBENCH_PATH, tmp_path)

    message = str(caught.value)
    assert "1 of 1 images" in message
    assert str(tmp_path / "000000577539.jpg") in message
    assert "--image-root" in message


def test_missing_images_message(retrieval_csv, tmp_path):
    with pytest.raises(MissingImagesError) as caught:
        read_negbench_retrieval_csv(retrieval_csv, tmp_path)

    error = caught.value
    message = str(error)
    assert isinstance(error, FileNotFoundError)
    assert "252 of 252 images" in message
    assert NEGBENCH_PATH in message
    assert "data/coco/images/val2017/000000349860.jpg" in message
    assert f"image root: {tmp_path}" in message
    assert "pass --image-root <the folder that holds the images>" in message
    assert "and 247 more" in message
    assert str(retrieval_csv) in message


def test_skip_missing_images(images):
    items = [RetrievalItem(f"data/{index}.jpg", ["x"]) for index in range(2)]
    items += [RetrievalItem(NEGBENCH_PATH, ["a"]), RetrievalItem(NEGBENCH_PATH, ["b"])]
    items += [RetrievalItem("data/coco/images/val2017/000000349860.jpg", ["c"])]

    check = resolve_item_images(items, images, on_missing="skip")

    assert [item.captions for item in check.items] == [["a"], ["b"], ["c"]]
    assert check.skipped == 2
    assert check.missing == ["data/0.jpg", "data/1.jpg"]
    assert check.image_count == 4


def test_skip_rejects_mostly_missing(images):
    items = [RetrievalItem(f"data/{index}.jpg", ["x"]) for index in range(3)] + [RetrievalItem(NEGBENCH_PATH, ["a"])]

    with pytest.raises(MissingImagesError, match="3 of 4 images"):
        resolve_item_images(items, images, on_missing="skip")


def test_keep_missing_images(retrieval_csv, tmp_path):
    items = read_negbench_retrieval_csv(retrieval_csv, tmp_path, on_missing="keep")

    assert len(items) == 252
    assert items[0].image == NEGBENCH_PATH


# ---------------------------------------------------------------------------------------------------------
# Project JSONL and CSV


def test_jsonl_round_trip(images, tmp_path):
    examples = [example(str(images / "000000577539.jpg")), example(str(images / "000000349860.jpg"), "Two cats.")]
    path = tmp_path / "out" / "train.jsonl"

    write_jsonl(examples, path)

    assert read_jsonl(path) == examples
    assert os.listdir(path.parent) == ["train.jsonl"]


def test_jsonl_replaces_file(images, tmp_path):
    path = write_text(tmp_path / "train.jsonl", "old content\n")

    write_jsonl([example(str(images / "000000577539.jpg"))], path)

    assert len(path.read_text(encoding="utf-8").splitlines()) == 1


def test_jsonl_relative_image(coco_neg, tmp_path):
    row = {
        "image": "images/000000577539.jpg",
        "caption": "A bowl.",
        "presence_negated": "A bowl, but there is no bowl.",
        "absence_negated": "A bowl, but there is no fork.",
        "extra": 1,
    }
    path = write_text(tmp_path / "rows.jsonl", json.dumps(row) + "\n\n")

    examples = read_jsonl(path, image_root=coco_neg)

    assert examples[0].image == str(coco_neg / "images" / "000000577539.jpg")
    assert examples[0].objects == []
    assert examples[0].present_object == ""
    assert examples[0].image_id is None


def test_jsonl_broken_line(images, tmp_path):
    good = json.dumps(vars(example(NEGBENCH_PATH)))
    path = write_text(tmp_path / "rows.jsonl", f"{good}\n{good}\n{{\"image\": \"a.jpg\",\n")

    with pytest.raises(DataFormatError) as caught:
        read_jsonl(path, images)

    assert caught.value.line == 3
    assert "line 3" in str(caught.value)
    assert "invalid JSON" in str(caught.value)


def test_jsonl_missing_key(tmp_path):
    row = vars(example(NEGBENCH_PATH))
    del row["absence_negated"]
    path = write_text(tmp_path / "rows.jsonl", json.dumps(row) + "\n")

    with pytest.raises(DataFormatError, match=r"line 1: missing key 'absence_negated'"):
        read_jsonl(path)


def test_jsonl_empty_caption(tmp_path):
    row = vars(example(NEGBENCH_PATH, caption="  "))
    path = write_text(tmp_path / "rows.jsonl", "\n" + json.dumps(row) + "\n")

    with pytest.raises(DataFormatError, match=r"line 2: 'caption' is empty"):
        read_jsonl(path)


def test_jsonl_not_an_object(tmp_path):
    path = write_text(tmp_path / "rows.jsonl", "[1, 2]\n")

    with pytest.raises(DataFormatError, match="line 1: expected a JSON object, not list"):
        read_jsonl(path)


def test_jsonl_bad_objects(tmp_path):
    row = vars(example(NEGBENCH_PATH))
    row["objects"] = "dog"
    path = write_text(tmp_path / "rows.jsonl", json.dumps(row) + "\n")

    with pytest.raises(DataFormatError, match="'objects' must be a list of strings"):
        read_jsonl(path)


def test_negation_csv(images, tmp_path):
    header = "image,caption,presence_negated,absence_negated,objects\n"
    row = f"{NEGBENCH_PATH},A bowl.,\"A bowl, but there is no bowl.\",\"A bowl, but there is no fork.\",\"['bowl']\"\n"
    path = write_text(tmp_path / "rows.csv", header + row)

    examples = read_negation_csv(path, images)

    assert examples[0].objects == ["bowl"]
    assert examples[0].absence_negated == "A bowl, but there is no fork."


def test_jsonl_failed_write_keeps_file(tmp_path):
    path = write_text(tmp_path / "train.jsonl", "old content\n")

    with pytest.raises(TypeError):
        write_jsonl([object()], path)

    assert path.read_text(encoding="utf-8") == "old content\n"
    assert os.listdir(tmp_path) == ["train.jsonl"]


def test_jsonl_invalid_utf8(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(json.dumps(vars(example(NEGBENCH_PATH))).encode() + b"\n\xff\xfe\n")

    with pytest.raises(DataFormatError, match="line 2: not UTF-8 text"):
        read_jsonl(path)

# ---------------------------------------------------------------------------------------------------------
# CC-Neg and NegationCLIP


@pytest.fixture(scope="module")
def coco_records(captions_json, images) -> list[ImageRecord]:
    return read_coco(captions_json, image_root=images)[:5]


def ccneg_data(records: list[ImageRecord]) -> dict:
    return {
        "image_paths": [f"{CCNEG_PREFIX}/{Path(record.image).name}" for record in records],
        "annotations": [
            {"json": {"caption": record.captions[0]}, "sop_data": {"negative-prompt": f"not {record.captions[0]}"}}
            for record in records
        ],
    }


def test_ccneg_split(coco_records, images, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "ccneg_preprocessed.pt"
    torch.save(ccneg_data(coco_records), path)

    every = read_ccneg(path, images)
    evaluation = read_ccneg(path, images, split="eval", eval_size=2)
    training = read_ccneg(path, images, split="train", eval_size=2)

    first_caption = coco_records[0].captions[0]
    assert every[0] == CcNegItem(coco_records[0].image, first_caption, f"not {first_caption}")
    assert len(every) == 5
    assert evaluation == every[3:]
    assert training == every[:3]


def test_ccneg_opaque_object(coco_records, images, tmp_path):
    torch = pytest.importorskip("torch")
    data = ccneg_data(coco_records)
    data["annotations"][0]["extra"] = _Opaque()
    path = tmp_path / "ccneg_preprocessed.pt"
    torch.save(data, path)

    with pytest.raises(DataFormatError) as caught:
        read_ccneg(path, images)

    message = str(caught.value)
    assert "objects other than tensors" in message
    assert "_Opaque" in message


def test_ccneg_missing_caption(coco_records, images, tmp_path):
    torch = pytest.importorskip("torch")
    data = ccneg_data(coco_records)
    del data["annotations"][4]["sop_data"]["negative-prompt"]
    path = tmp_path / "ccneg_preprocessed.pt"
    torch.save(data, path)

    with pytest.raises(DataFormatError, match=r"annotations\[4\]: missing \['sop_data'\]\['negative-prompt'\]"):
        read_ccneg(path, images)


def test_ccneg_not_torch_file(tmp_path):
    path = write_text(tmp_path / "ccneg_preprocessed.pt", "plain text")

    with pytest.raises(DataFormatError, match="not a file written by torch.save"):
        read_ccneg(path)


def test_ccneg_length_mismatch(coco_records, tmp_path):
    torch = pytest.importorskip("torch")
    data = ccneg_data(coco_records)
    data["image_paths"].pop()
    path = tmp_path / "ccneg_preprocessed.pt"
    torch.save(data, path)

    with pytest.raises(DataFormatError, match="'image_paths' has 4 entries but 'annotations' has 5"):
        read_ccneg(path)


def negationclip_data() -> dict:
    return {
        "images": [{"id": 577539, "file_name": "000000577539.jpg"}],
        "annotations": [
            {
                "image_id": 577539,
                "id": 1,
                "caption": "A bowl of fruit.",
                "updated_caption": "A bowl of fruit with no fork",
            },
            {"image_id": 577539, "id": 2, "caption": "Bananas in a bowl."},
        ],
    }


def test_negationclip_json(images, tmp_path):
    path = write_text(tmp_path / "negationclip.json", json.dumps(negationclip_data()))

    items = read_negationclip_json(path, images)

    assert items == [
        NegationClipCaption(
            str(images / "000000577539.jpg"), "A bowl of fruit.", "A bowl of fruit with no fork", "577539"
        )
    ]


def test_negationclip_plain_coco(images, tmp_path):
    data = negationclip_data()
    del data["annotations"][0]["updated_caption"]
    path = write_text(tmp_path / "negationclip.json", json.dumps(data))

    with pytest.raises(DataFormatError, match="no annotation has an 'updated_caption'"):
        read_negationclip_json(path, images)


# ---------------------------------------------------------------------------------------------------------
# Format detection


def test_load_dataset_file_formats(mcq_csv, retrieval_csv, captions_json, images, tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    write_jsonl([example(str(images / "000000577539.jpg"))], jsonl)
    negationclip = write_text(tmp_path / "negationclip.json", json.dumps(negationclip_data()))

    cases = [
        (mcq_csv, "negbench_mcq", 344),
        (retrieval_csv, "negbench_retrieval", 252),
        (captions_json, "coco_captions", 252),
        (jsonl, "negation_jsonl", 1),
        (negationclip, "negationclip_json", 1),
    ]
    for path, expected_format, expected_count in cases:
        loaded = load_dataset_file(path, images)
        assert loaded.format == expected_format, path
        assert len(loaded.items) == expected_count, path


def test_load_dataset_file_unknown(tmp_path):
    csv_path = write_text(tmp_path / "table.csv", "a,b\n1,2\n")
    text_path = write_text(tmp_path / "notes.txt", "hello")

    with pytest.raises(DataFormatError, match="unrecognised CSV columns"):
        load_dataset_file(csv_path)
    with pytest.raises(DataFormatError, match="unsupported file type '.txt'"):
        load_dataset_file(text_path)


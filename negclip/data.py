"""Dataset readers, the project's JSONL format and image path resolution.

Every reader returns dataclasses whose `image` is a path that exists on this machine. Published files carry
paths from their authors' disks (NegBench writes `data/coco/images/val2017/000000577539.jpg`), so readers
resolve each path against an image root that the user passes (`--image-root` in the CLI).
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import os
import re
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
OnMissing = Literal["raise", "skip", "keep"]
Split = Literal["all", "train", "eval"]

IMAGE_ROOT_FIX = "pass --image-root <the folder that holds the images>"

# With on_missing="skip", a reader still raises when fewer than this fraction of the images are found,
# because then the image root is almost certainly wrong rather than a few files lost.
MIN_FOUND_FRACTION = 0.5

# CC-Neg's authors use the last 40,000 items of ccneg_preprocessed.pt as the evaluation split
# (`num_ccneg_eval_samples` in the CoN-CLIP repository's src/configs/__init__.py).
CCNEG_EVAL_SIZE = 40_000

# How many missing paths a MissingImagesError lists.
MISSING_PATHS_SHOWN = 5

NEGBENCH_RETRIEVAL_COLUMNS = ("positive_objects", "negative_objects", "filepath", "image_id", "captions")
NEGBENCH_MCQ_COLUMNS = ("image_path", "correct_answer", "caption_0", "caption_1")
NEGATION_COLUMNS = ("image", "caption", "presence_negated", "absence_negated")
NEGATION_LIST_KEYS = ("objects", "absent_objects")
NEGATION_OPTIONAL_TEXT_KEYS = ("present_object", "absent_object")
MCQ_TEMPLATE_COLUMN = "correct_answer_template"
MCQ_DEFAULT_TEMPLATE = "unspecified"


# ---------------------------------------------------------------------------------------------------------
# Data types


@dataclass
class ImageRecord:
    """One annotated image: its captions and the object categories present and plausibly absent."""

    image: str
    captions: list[str]
    objects: list[str]
    absent_objects: list[str] = field(default_factory=list)
    image_id: str | None = None


@dataclass
class NegationExample:
    """One row of the project's JSONL: a caption with a false and a true negated variant."""

    image: str
    caption: str
    presence_negated: str
    absence_negated: str
    present_object: str
    absent_object: str
    objects: list[str]
    absent_objects: list[str]
    image_id: str | None = None


@dataclass
class McqItem:
    """One multiple-choice question: an image, candidate captions and the index of the right one."""

    image: str
    captions: list[str]
    correct_index: int
    template: str


@dataclass
class RetrievalItem:
    """One image with all of its captions, for text-image retrieval."""

    image: str
    captions: list[str]


@dataclass
class CcNegItem:
    """One CC-Neg pair: a true caption and a negated caption that is false for the image."""

    image: str
    caption: str
    negated_caption: str


@dataclass
class NegationClipCaption:
    """One NegationCLIP caption pair: `updated_caption` adds the absence of an object, so it stays true."""

    image: str
    caption: str
    updated_caption: str
    image_id: str | None = None


Item = TypeVar("Item")


@dataclass
class ImageCheck(Generic[Item]):
    """Outcome of resolving the image paths of a list of items."""

    items: list[Item]
    skipped: int  # items dropped because their image was not found
    missing: list[str]  # distinct image paths, as written in the file, that were not found
    image_count: int  # distinct image paths in the file


@dataclass
class LoadedDataset:
    """A dataset file read by `load_dataset_file`, tagged with the format that was detected."""

    format: str
    items: list


# ---------------------------------------------------------------------------------------------------------
# Errors


class DataFormatError(ValueError):
    """Invalid content in a dataset file. The message names the file, the place in it and the problem."""

    def __init__(
        self,
        path: PathLike,
        problem: str,
        *,
        line: int | None = None,
        column: str | None = None,
        entry: str | None = None,
    ) -> None:
        self.path = str(path)
        self.problem = problem
        self.line = line
        self.column = column
        self.entry = entry
        location = self.path
        if line is not None:
            location += f", line {line}"
        if column is not None:
            location += f", column {column!r}"
        if entry is not None:
            location += f", {entry}"
        super().__init__(f"{location}: {problem}")


class MissingImagesError(FileNotFoundError):
    """Images named by a dataset file were not found under any of the paths tried."""

    def __init__(
        self,
        missing: Sequence[str],
        image_count: int,
        image_root: PathLike | None,
        looked_for: Sequence[Path] = (),
        source: PathLike | None = None,
    ) -> None:
        self.missing = list(missing)
        self.image_count = image_count
        self.image_root = None if image_root is None else str(image_root)
        self.looked_for = list(looked_for)
        self.source = None if source is None else str(source)
        super().__init__(self._message())

    def _message(self) -> str:
        source = f" named in {self.source}" if self.source else ""
        root = self.image_root if self.image_root is not None else "not set"
        listed = ", ".join(repr(path) for path in self.missing[:MISSING_PATHS_SHOWN])
        if len(self.missing) > MISSING_PATHS_SHOWN:
            listed += f" and {len(self.missing) - MISSING_PATHS_SHOWN} more"
        message = (
            f"{len(self.missing)} of {self.image_count} images{source} were not found (image root: {root}). "
            f"Missing, as written: {listed}."
        )
        if self.looked_for:
            tried = ", ".join(str(path) for path in self.looked_for)
            message += f" For {self.missing[0]!r} these paths were tried: {tried}."
        return message + f" To fix, {IMAGE_ROOT_FIX}."


# ---------------------------------------------------------------------------------------------------------
# Image paths


def candidate_image_paths(
    path: PathLike, image_root: PathLike | None = None, base_dir: PathLike | None = None
) -> list[Path]:
    """List the places to look for an image, in the order `resolve_image_path` tries them.

    The order is the path itself when absolute, then image_root / path, image_root / file name,
    image_root / last two components and base_dir / path. A relative path with neither root given is
    taken relative to the current directory.
    """
    written = Path(path).expanduser()
    relative_parts = [part for part in written.parts if part != written.anchor]
    candidates: list[Path] = []
    if written.is_absolute():
        candidates.append(written)
    if image_root is not None:
        root = Path(image_root).expanduser()
        if not written.is_absolute():
            candidates.append(root / written)
        candidates.append(root / written.name)
        if len(relative_parts) >= 2:
            candidates.append(root.joinpath(*relative_parts[-2:]))
    if base_dir is not None and not written.is_absolute():
        candidates.append(Path(base_dir) / written)
    if image_root is None and base_dir is None and not written.is_absolute():
        candidates.append(written)
    return list(dict.fromkeys(candidates))


def find_image_path(
    path: PathLike, image_root: PathLike | None = None, base_dir: PathLike | None = None
) -> Path | None:
    """Return the first candidate path that is an existing file, made absolute, or None."""
    for candidate in candidate_image_paths(path, image_root, base_dir):
        if candidate.is_file():
            return Path(os.path.abspath(candidate))
    return None


def resolve_image_path(path: PathLike, image_root: PathLike | None = None, base_dir: PathLike | None = None) -> Path:
    """Find an image on this machine from a path written in a dataset file.

    Raises MissingImagesError listing the paths tried when no candidate exists.
    """
    found = find_image_path(path, image_root, base_dir)
    if found is None:
        looked_for = candidate_image_paths(path, image_root, base_dir)
        raise MissingImagesError([str(path)], 1, image_root, looked_for)
    return found


def resolve_item_images(
    items: Sequence[Item],
    image_root: PathLike | None = None,
    base_dir: PathLike | None = None,
    *,
    on_missing: OnMissing = "raise",
    min_found_fraction: float = MIN_FOUND_FRACTION,
    source: PathLike | None = None,
) -> ImageCheck[Item]:
    """Replace each item's `image` (a dataclass field) by the path found on disk.

    on_missing sets what happens to items whose image is not found:
      "raise": raise MissingImagesError (the default);
      "skip": drop them and return how many were dropped, but raise when fewer than min_found_fraction of
        the distinct images are found;
      "keep": keep them with the path as written, for reading the text of a file whose images are absent.
    """
    if on_missing not in ("raise", "skip", "keep"):
        raise ValueError(f"on_missing must be 'raise', 'skip' or 'keep', not {on_missing!r}")

    found_by_path = _find_distinct_images(items, image_root, base_dir)
    missing = [written for written, found in found_by_path.items() if found is None]
    resolved: list[Item] = []
    found_items: list[Item] = []
    for item in items:
        found = found_by_path[item.image]
        if found is None:
            resolved.append(item)
        else:
            resolved.append(replace(item, image=str(found)))
            found_items.append(resolved[-1])

    check = ImageCheck(resolved, skipped=0, missing=missing, image_count=len(found_by_path))
    if not missing or on_missing == "keep":
        _log_kept_missing(check, image_root, source)
        return check

    found_fraction = 1 - len(missing) / len(found_by_path)
    if on_missing == "raise" or found_fraction < min_found_fraction:
        looked_for = candidate_image_paths(missing[0], image_root, base_dir)
        raise MissingImagesError(missing, len(found_by_path), image_root, looked_for, source)

    check.items = found_items
    check.skipped = len(items) - len(found_items)
    logger.warning(
        "skipped %d of %d items because %d of %d images%s were not found (image root: %s)",
        check.skipped,
        len(items),
        len(missing),
        len(found_by_path),
        f" named in {source}" if source else "",
        image_root,
    )
    return check


def _find_distinct_images(
    items: Sequence[Any], image_root: PathLike | None, base_dir: PathLike | None
) -> dict[str, Path | None]:
    found_by_path: dict[str, Path | None] = {}
    for item in items:
        if item.image not in found_by_path:
            found_by_path[item.image] = find_image_path(item.image, image_root, base_dir)
    return found_by_path


def _log_kept_missing(check: ImageCheck, image_root: PathLike | None, source: PathLike | None) -> None:
    if check.missing:
        logger.warning(
            "%d of %d images%s were not found (image root: %s), so their items keep the path as written",
            len(check.missing),
            check.image_count,
            f" named in {source}" if source else "",
            image_root,
        )


def _resolve(
    items: list[Item],
    image_root: PathLike | None,
    base_dir: PathLike | None,
    on_missing: OnMissing,
    source: PathLike,
) -> list[Item]:
    return resolve_item_images(items, image_root, base_dir, on_missing=on_missing, source=source).items


# ---------------------------------------------------------------------------------------------------------
# Field checks shared by the readers


def _required_text(
    path: PathLike, row: dict, key: str, *, line: int | None = None, entry: str | None = None
) -> str:
    if key not in row or row[key] is None:
        raise DataFormatError(path, f"missing key {key!r}", line=line, entry=entry)
    value = row[key]
    if not isinstance(value, str):
        raise DataFormatError(
            path, f"{key!r} must be a string, not {type(value).__name__}", line=line, entry=entry
        )
    if not value.strip():
        raise DataFormatError(path, f"{key!r} is empty", line=line, entry=entry)
    return value.strip()


def _string_list(
    path: PathLike, value: Any, key: str, *, line: int | None = None, entry: str | None = None
) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(element, str) for element in value):
        raise DataFormatError(
            path, f"{key!r} must be a list of strings, not {_preview(value)}", line=line, entry=entry
        )
    return value


def _clean_labels(labels: Iterable[str]) -> list[str]:
    """Lower-case and strip object labels, dropping empty and repeated ones (first occurrence kept)."""
    cleaned = (label.strip().lower() for label in labels)
    return list(dict.fromkeys(label for label in cleaned if label))


def _optional_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _preview(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------
# CSV


def _read_csv_rows(path: PathLike, required_columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) for each data row after checking that the header has the required columns.

    The line number is the file line where the row ends, which is the row's line unless a quoted field
    spans several lines.
    """
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        try:
            _check_columns(path, reader.fieldnames, required_columns)
            for row in reader:
                _check_row_length(path, reader.line_num, row)
                yield reader.line_num, row
        except csv.Error as error:
            raise DataFormatError(path, f"invalid CSV: {error}", line=reader.line_num) from error
        except UnicodeDecodeError as error:
            raise DataFormatError(path, "not UTF-8 text", line=reader.line_num + 1) from error


def _read_csv_header(path: PathLike) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as file:
        try:
            return next(csv.reader(file), [])
        except (csv.Error, UnicodeDecodeError) as error:
            raise DataFormatError(path, f"unreadable CSV header: {error}", line=1) from error


def _check_columns(path: PathLike, columns: Sequence[str] | None, required_columns: Sequence[str]) -> None:
    if not columns:
        raise DataFormatError(path, f"empty file (expected a header row with columns {', '.join(required_columns)})")
    absent = [column for column in required_columns if column not in columns]
    if absent:
        raise DataFormatError(
            path,
            f"missing column(s) {', '.join(absent)} (the header has {', '.join(columns)})",
            line=1,
        )


def _check_row_length(path: PathLike, line: int, row: dict) -> None:
    # DictReader stores surplus fields under the key None and fills absent trailing fields with None.
    if None in row:
        raise DataFormatError(path, f"{len(row[None])} more field(s) than the header has columns", line=line)
    short = [column for column, value in row.items() if value is None]
    if short:
        raise DataFormatError(
            path, f"the row has fewer fields than the header (no value for {', '.join(short)})", line=line
        )


def _csv_text(path: PathLike, line: int, row: dict[str, str], column: str) -> str:
    value = row[column].strip()
    if not value:
        raise DataFormatError(path, "empty value", line=line, column=column)
    return value


def _csv_string_list(path: PathLike, line: int, row: dict[str, str], column: str) -> list[str]:
    """Parse a cell written as a Python list of strings, such as "['person', 'dining table']".

    ast.literal_eval only builds literals, so a cell cannot run code.
    """
    text = row[column].strip()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise DataFormatError(
            path,
            f"invalid Python list of strings {_preview(text)} ({type(error).__name__}: {error})",
            line=line,
            column=column,
        ) from error
    if not isinstance(value, list) or not all(isinstance(element, str) for element in value):
        raise DataFormatError(
            path, f"expected a list of strings, got {_preview(value)}", line=line, column=column
        )
    return value


def _csv_captions(path: PathLike, line: int, row: dict[str, str], column: str) -> list[str]:
    captions = _csv_string_list(path, line, row, column)
    if not captions:
        raise DataFormatError(path, "empty caption list", line=line, column=column)
    for index, caption in enumerate(captions):
        if not caption.strip():
            raise DataFormatError(path, f"caption {index} is empty", line=line, column=column)
    return [caption.strip() for caption in captions]


# ---------------------------------------------------------------------------------------------------------
# NegBench retrieval and multiple-choice CSVs


@dataclass
class _NegbenchRetrievalRow:
    line: int
    filepath: str
    image_id: str | None
    captions: list[str]
    positive_objects: list[str]
    negative_objects: list[str]


def _read_negbench_retrieval_rows(path: PathLike) -> list[_NegbenchRetrievalRow]:
    rows = []
    for line, row in _read_csv_rows(path, NEGBENCH_RETRIEVAL_COLUMNS):
        rows.append(
            _NegbenchRetrievalRow(
                line=line,
                filepath=_csv_text(path, line, row, "filepath"),
                image_id=_optional_id(row["image_id"].strip()),
                captions=_csv_captions(path, line, row, "captions"),
                positive_objects=_clean_labels(_csv_string_list(path, line, row, "positive_objects")),
                negative_objects=_clean_labels(_csv_string_list(path, line, row, "negative_objects")),
            )
        )
    return rows


def read_negbench_retrieval_csv(
    path: PathLike, image_root: PathLike | None = None, *, on_missing: OnMissing = "raise"
) -> list[RetrievalItem]:
    """Read a NegBench retrieval CSV (columns positive_objects, negative_objects, filepath, image_id, captions)."""
    items = [RetrievalItem(row.filepath, row.captions) for row in _read_negbench_retrieval_rows(path)]
    return _resolve(items, image_root, Path(path).parent, on_missing, path)


def read_negbench_retrieval_records(
    path: PathLike, image_root: PathLike | None = None, *, on_missing: OnMissing = "raise"
) -> list[ImageRecord]:
    """Read a NegBench retrieval CSV as ImageRecords: captions, positive_objects and negative_objects."""
    records = [_record_from_negbench_row(row) for row in _read_negbench_retrieval_rows(path)]
    return _resolve(records, image_root, Path(path).parent, on_missing, path)


def _record_from_negbench_row(row: _NegbenchRetrievalRow) -> ImageRecord:
    absent = [name for name in row.negative_objects if name not in row.positive_objects]
    return ImageRecord(row.filepath, row.captions, row.positive_objects, absent, row.image_id)


def read_negbench_mcq_csv(
    path: PathLike, image_root: PathLike | None = None, *, on_missing: OnMissing = "raise"
) -> list[McqItem]:
    """Read a NegBench multiple-choice CSV.

    Columns: image_path, correct_answer (0-based index), caption_0 ... caption_N and, optionally,
    correct_answer_template ("positive", "negative" or "hybrid" in NegBench).
    """
    items = []
    caption_columns: list[str] | None = None
    for line, row in _read_csv_rows(path, NEGBENCH_MCQ_COLUMNS):
        if caption_columns is None:
            caption_columns = _mcq_caption_columns(path, list(row))
        captions = [_csv_text(path, line, row, column) for column in caption_columns]
        template = (row.get(MCQ_TEMPLATE_COLUMN) or "").strip() or MCQ_DEFAULT_TEMPLATE
        items.append(
            McqItem(
                image=_csv_text(path, line, row, "image_path"),
                captions=captions,
                correct_index=_mcq_correct_index(path, line, row, len(captions)),
                template=template,
            )
        )
    return _resolve(items, image_root, Path(path).parent, on_missing, path)


def _mcq_caption_columns(path: PathLike, columns: list[str]) -> list[str]:
    numbers = sorted(int(match[1]) for column in columns if (match := re.fullmatch(r"caption_(\d+)", column)))
    if numbers != list(range(len(numbers))):
        raise DataFormatError(
            path, f"caption columns must be numbered caption_0, caption_1, ... without gaps; found {numbers}", line=1
        )
    return [f"caption_{number}" for number in numbers]


def _mcq_correct_index(path: PathLike, line: int, row: dict[str, str], caption_count: int) -> int:
    text = row["correct_answer"].strip()
    if not re.fullmatch(r"\d+", text) or int(text) >= caption_count:
        raise DataFormatError(
            path,
            f"expected an index from 0 to {caption_count - 1}, got {_preview(text)}",
            line=line,
            column="correct_answer",
        )
    return int(text)


# ---------------------------------------------------------------------------------------------------------
# COCO caption and instance JSON


def read_json(path: PathLike) -> Any:
    """Parse a JSON file, raising DataFormatError with the line for invalid JSON or non-UTF-8 text."""
    try:
        with open(path, encoding="utf-8-sig") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise DataFormatError(path, f"invalid JSON: {error.msg} (column {error.colno})", line=error.lineno) from error
    except UnicodeDecodeError as error:
        raise DataFormatError(path, "not UTF-8 text") from error


def _json_list(path: PathLike, data: Any, key: str) -> list:
    if not isinstance(data, dict):
        raise DataFormatError(path, f"expected a JSON object at the top level, not {type(data).__name__}")
    if key not in data:
        raise DataFormatError(path, f"missing top-level key {key!r} (COCO format has 'images' and 'annotations')")
    if not isinstance(data[key], list):
        raise DataFormatError(path, f"{key!r} must be a list, not {type(data[key]).__name__}")
    return data[key]


def _json_object(path: PathLike, value: Any, entry: str) -> dict:
    if not isinstance(value, dict):
        raise DataFormatError(path, f"expected a JSON object, not {_preview(value)}", entry=entry)
    return value


def _coco_id(path: PathLike, row: dict, key: str, entry: str) -> str:
    if key not in row:
        raise DataFormatError(path, f"missing key {key!r}", entry=entry)
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataFormatError(path, f"{key!r} must be an integer or string, not {_preview(value)}", entry=entry)
    return str(value)


def _coco_image_files(path: PathLike, data: Any) -> dict[str, str]:
    """Map image id (as a string) to file name, in the order of the 'images' list."""
    file_names = {}
    for index, image in enumerate(_json_list(path, data, "images")):
        entry = f"images[{index}]"
        image = _json_object(path, image, entry)
        file_names[_coco_id(path, image, "id", entry)] = _required_text(path, image, "file_name", entry=entry)
    return file_names


def _coco_captions(path: PathLike, data: Any, file_names: dict[str, str]) -> dict[str, list[str]]:
    """Group captions by image id. Empty captions and captions of unknown images are dropped and counted in the log."""
    captions: dict[str, list[str]] = {image_id: [] for image_id in file_names}
    unknown_image = empty = 0
    for index, annotation in enumerate(_json_list(path, data, "annotations")):
        entry = f"annotations[{index}]"
        annotation = _json_object(path, annotation, entry)
        image_id = _coco_id(path, annotation, "image_id", entry)
        if "caption" not in annotation:
            raise DataFormatError(path, "missing key 'caption'", entry=entry)
        caption = annotation["caption"]
        if not isinstance(caption, str):
            raise DataFormatError(path, f"'caption' must be a string, not {_preview(caption)}", entry=entry)
        if image_id not in captions:
            unknown_image += 1
        elif not caption.strip():
            empty += 1
        else:
            captions[image_id].append(caption.strip())
    if unknown_image or empty:
        logger.warning(
            "%s: dropped %d captions of images not in 'images' and %d empty captions", path, unknown_image, empty
        )
    return captions


def _coco_instance_labels(path: PathLike) -> dict[str, list[str]]:
    """Map image id to the category names of its instance annotations, in order of first appearance."""
    data = read_json(path)
    category_names = {}
    for index, category in enumerate(_json_list(path, data, "categories")):
        entry = f"categories[{index}]"
        category = _json_object(path, category, entry)
        category_names[_coco_id(path, category, "id", entry)] = _required_text(path, category, "name", entry=entry)

    labels: dict[str, list[str]] = {}
    for index, annotation in enumerate(_json_list(path, data, "annotations")):
        entry = f"annotations[{index}]"
        annotation = _json_object(path, annotation, entry)
        category_id = _coco_id(path, annotation, "category_id", entry)
        if category_id not in category_names:
            raise DataFormatError(path, f"category_id {category_id} is not in 'categories'", entry=entry)
        labels.setdefault(_coco_id(path, annotation, "image_id", entry), []).append(category_names[category_id])
    return {image_id: _clean_labels(names) for image_id, names in labels.items()}


def read_coco(
    captions_json: PathLike,
    instances_json: PathLike | None = None,
    image_root: PathLike | None = None,
    negbench_retrieval_csv: PathLike | None = None,
    *,
    on_missing: OnMissing = "raise",
) -> list[ImageRecord]:
    """Read COCO captions, with object labels from COCO instances and/or a NegBench retrieval CSV.

    Instance labels come first when both sources label an image, and the CSV adds its other positive
    objects. absent_objects come from the CSV's negative_objects. CSV rows match images by image_id or by file name.
    Images that neither source labels keep an empty `objects` list.
    """
    data = read_json(captions_json)
    return _coco_records(captions_json, data, instances_json, image_root, negbench_retrieval_csv, on_missing)


def _coco_records(
    captions_json: PathLike,
    data: Any,
    instances_json: PathLike | None,
    image_root: PathLike | None,
    negbench_retrieval_csv: PathLike | None,
    on_missing: OnMissing,
) -> list[ImageRecord]:
    file_names = _coco_image_files(captions_json, data)
    captions = _coco_captions(captions_json, data, file_names)
    instance_labels = _coco_instance_labels(instances_json) if instances_json is not None else {}
    negbench_rows = _negbench_rows_by_key(negbench_retrieval_csv) if negbench_retrieval_csv is not None else {}

    records = []
    for image_id, file_name in file_names.items():
        row = negbench_rows.get(image_id) or negbench_rows.get(Path(file_name).name)
        records.append(_coco_record(image_id, file_name, captions[image_id], instance_labels.get(image_id, []), row))

    labelled = sum(1 for record in records if record.objects)
    logger.info("%s: %d images, %d with object labels", captions_json, len(records), labelled)
    return _resolve(records, image_root, Path(captions_json).parent, on_missing, captions_json)


def _negbench_rows_by_key(path: PathLike) -> dict[str, _NegbenchRetrievalRow]:
    """Index NegBench rows by image_id and by file name, so either can match a COCO image."""
    rows: dict[str, _NegbenchRetrievalRow] = {}
    for row in _read_negbench_retrieval_rows(path):
        if row.image_id is not None:
            rows.setdefault(row.image_id, row)
        rows.setdefault(Path(row.filepath).name, row)
    return rows


def _coco_record(
    image_id: str,
    file_name: str,
    captions: list[str],
    instance_objects: list[str],
    negbench_row: _NegbenchRetrievalRow | None,
) -> ImageRecord:
    objects = list(instance_objects)
    absent: list[str] = []
    if negbench_row is not None:
        objects = _clean_labels(objects + negbench_row.positive_objects)
        absent = [name for name in negbench_row.negative_objects if name not in objects]
    return ImageRecord(file_name, captions, objects, absent, image_id)


# ---------------------------------------------------------------------------------------------------------
# NegationCLIP and CC-Neg


def read_negationclip_json(
    path: PathLike, image_root: PathLike | None = None, *, on_missing: OnMissing = "raise"
) -> list[NegationClipCaption]:
    """Read NegationCLIP's COCO-format caption JSON, whose annotations add an `updated_caption`.

    NegationCLIP's generator writes only annotations that received an updated caption. Annotations
    without one are skipped and counted in the log.
    """
    data = read_json(path)
    return _resolve(_negationclip_items(path, data), image_root, Path(path).parent, on_missing, path)


def _negationclip_items(path: PathLike, data: Any) -> list[NegationClipCaption]:
    file_names = _coco_image_files(path, data)
    annotations = _json_list(path, data, "annotations")
    items = []
    for index, annotation in enumerate(annotations):
        entry = f"annotations[{index}]"
        annotation = _json_object(path, annotation, entry)
        if "updated_caption" not in annotation:
            continue
        image_id = _coco_id(path, annotation, "image_id", entry)
        if image_id not in file_names:
            raise DataFormatError(path, f"image_id {image_id} is not in 'images'", entry=entry)
        caption = _required_text(path, annotation, "caption", entry=entry)
        updated_caption = _required_text(path, annotation, "updated_caption", entry=entry)
        items.append(NegationClipCaption(file_names[image_id], caption, updated_caption, image_id))

    if annotations and not items:
        raise DataFormatError(
            path, "no annotation has an 'updated_caption'. Read a plain COCO caption file with read_coco instead"
        )
    if len(items) < len(annotations):
        logger.info("%s: skipped %d annotations without 'updated_caption'", path, len(annotations) - len(items))
    return items


def read_ccneg(
    path: PathLike,
    image_root: PathLike | None = None,
    *,
    split: Split = "all",
    eval_size: int = CCNEG_EVAL_SIZE,
    on_missing: OnMissing = "raise",
) -> list[CcNegItem]:
    """Read CC-Neg's released `ccneg_preprocessed.pt`.

    The file is a torch-saved dict with `image_paths` (list of str) and `annotations`, where
    annotations[i]["json"]["caption"] is the true caption and annotations[i]["sop_data"]["negative-prompt"]
    the negated, false one. split="eval" keeps the last `eval_size` items, "train" the rest, "all" every item.
    """
    # NOTE: checked only on files of this shape written with torch.save. The released file was not
    # available, so the nested caption keys ("json", "sop_data") are not verified against it.
    data = _load_torch_data(path)
    image_paths, annotations = _ccneg_lists(path, data)
    indices = _ccneg_split_indices(path, len(image_paths), split, eval_size)
    items = [_ccneg_item(path, index, image_paths[index], annotations[index]) for index in indices]
    return _resolve(items, image_root, Path(path).parent, on_missing, path)


def _load_torch_data(path: PathLike) -> Any:
    """Load a torch-saved file with weights_only=True, so only tensors and plain containers are unpickled."""
    import pickle

    import torch  # deferred because importing torch takes seconds and only this reader needs it

    if not Path(path).is_file():
        raise FileNotFoundError(f"file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise DataFormatError(path, "not a file written by torch.save (expected a zip archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        detail = f" (first one found: {unsupported[1]})" if unsupported else ""
        raise DataFormatError(
            path,
            "contains objects other than tensors, numbers, strings, lists and dicts"
            f"{detail}. It was not loaded because unpickling such objects can run code. "
            "Save the data again with plain types only",
        ) from error
    except RuntimeError as error:
        raise DataFormatError(path, f"torch.load failed: {error}") from error


def _ccneg_lists(path: PathLike, data: Any) -> tuple[list, list]:
    if not isinstance(data, dict):
        raise DataFormatError(path, f"expected a dict with 'image_paths' and 'annotations', not {type(data).__name__}")
    for key in ("image_paths", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataFormatError(path, f"{key!r} must be a list, not {type(data.get(key)).__name__}")
    image_paths, annotations = data["image_paths"], data["annotations"]
    if len(image_paths) != len(annotations):
        raise DataFormatError(
            path, f"'image_paths' has {len(image_paths)} entries but 'annotations' has {len(annotations)}"
        )
    return image_paths, annotations


def _ccneg_split_indices(path: PathLike, total: int, split: Split, eval_size: int) -> range:
    if split not in ("all", "train", "eval"):
        raise ValueError(f"split must be 'all', 'train' or 'eval', not {split!r}")
    if split != "all" and total <= eval_size:
        logger.warning(
            "%s has %d items, not more than the %d of the evaluation split, so every item is in 'eval' and "
            "'train' is empty",
            path,
            total,
            eval_size,
        )
    first_eval = max(total - eval_size, 0)
    if split == "eval":
        return range(first_eval, total)
    if split == "train":
        return range(0, first_eval)
    return range(total)


def _ccneg_item(path: PathLike, index: int, image_path: Any, annotation: Any) -> CcNegItem:
    if not isinstance(image_path, str) or not image_path.strip():
        raise DataFormatError(
            path, f"expected a non-empty string, not {_preview(image_path)}", entry=f"image_paths[{index}]"
        )
    entry = f"annotations[{index}]"
    caption = _nested_text(path, annotation, ("json", "caption"), entry)
    negated_caption = _nested_text(path, annotation, ("sop_data", "negative-prompt"), entry)
    return CcNegItem(image_path.strip(), caption, negated_caption)


def _nested_text(path: PathLike, value: Any, keys: tuple[str, ...], entry: str) -> str:
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            where = "".join(f"[{k!r}]" for k in keys[: depth + 1])
            raise DataFormatError(path, f"missing {where}", entry=entry)
        value = value[key]
    where = "".join(f"[{k!r}]" for k in keys)
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(path, f"{where} must be a non-empty string, not {_preview(value)}", entry=entry)
    return value.strip()


# ---------------------------------------------------------------------------------------------------------
# The project's JSONL (and the same columns as CSV)

def read_jsonl(
    path: PathLike, image_root: PathLike | None = None, *, on_missing: OnMissing = "raise"
) -> list[NegationExample]:
    """Read the project's JSONL, one NegationExample per line, skipping blank lines.

    Required keys: image, caption, presence_negated, absence_negated. Other NegationExample keys are
    optional and extra keys are ignored. Relative `image` paths are looked up under image_root first, then
    under the JSONL file's folder.
    """
    examples = []
    with open(path, "rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            row = _parse_json_line(path, line_number, raw_line)
            if row is not None:
                examples.append(_negation_example(path, line_number, row))
    return _resolve(examples, image_root, Path(path).parent, on_missing, path)


def _parse_json_line(path: PathLike, line_number: int, raw_line: bytes) -> dict | None:
    try:
        text = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(path, "not UTF-8 text", line=line_number) from error
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(
            path, f"invalid JSON: {error.msg} (column {error.colno})", line=line_number
        ) from error
    if not isinstance(row, dict):
        raise DataFormatError(path, f"expected a JSON object, not {type(row).__name__}", line=line_number)
    return row


def _negation_example(path: PathLike, line: int, row: dict) -> NegationExample:
    texts = {key: _required_text(path, row, key, line=line) for key in NEGATION_COLUMNS}
    optional_texts = {}
    for key in NEGATION_OPTIONAL_TEXT_KEYS:
        value = row.get(key) or ""
        if not isinstance(value, str):
            raise DataFormatError(path, f"{key!r} must be a string, not {_preview(value)}", line=line)
        optional_texts[key] = value.strip().lower()
    lists = {key: _clean_labels(_string_list(path, row.get(key) or [], key, line=line)) for key in NEGATION_LIST_KEYS}
    return NegationExample(**texts, **optional_texts, **lists, image_id=_optional_id(row.get("image_id")))


def read_negation_csv(
    path: PathLike, image_root: PathLike | None = None, *, on_missing: OnMissing = "raise"
) -> list[NegationExample]:
    """Read a CSV with the JSONL's keys as columns, where objects and absent_objects are Python-list strings."""
    examples = []
    for line, row in _read_csv_rows(path, NEGATION_COLUMNS):
        values: dict[str, Any] = dict(row)
        for key in NEGATION_LIST_KEYS:
            values[key] = _csv_string_list(path, line, row, key) if (row.get(key) or "").strip() else []
        examples.append(_negation_example(path, line, values))
    return _resolve(examples, image_root, Path(path).parent, on_missing, path)


def write_jsonl(examples: Iterable[NegationExample], path: PathLike) -> None:
    """Write examples as JSONL atomically, by writing a temporary file in the same folder and renaming it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        # Mode "x" creates the file with the usual permissions (umask applied), unlike tempfile.mkstemp.
        with open(temporary, "x", encoding="utf-8") as file:
            for example in examples:
                file.write(json.dumps(asdict(example), ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------
# Format detection

DATASET_FORMATS = (
    "negation_jsonl",
    "negation_csv",
    "negbench_retrieval",
    "negbench_mcq",
    "coco_captions",
    "negationclip_json",
    "ccneg",
)


def load_dataset_file(
    path: PathLike, image_root: PathLike | None = None, *, on_missing: OnMissing = "raise"
) -> LoadedDataset:
    """Read a dataset file, choosing the reader by extension and, for CSV and JSON, by columns or keys.

    Formats: .jsonl (project format), .csv (project columns, NegBench retrieval as ImageRecords, or NegBench
    multiple choice), .json (NegationCLIP captions, else COCO captions without labels), .pt (CC-Neg).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return LoadedDataset("negation_jsonl", read_jsonl(path, image_root, on_missing=on_missing))
    if suffix == ".csv":
        return _load_csv_dataset(path, image_root, on_missing)
    if suffix == ".json":
        return _load_json_dataset(path, image_root, on_missing)
    if suffix in (".pt", ".pth"):
        return LoadedDataset("ccneg", read_ccneg(path, image_root, on_missing=on_missing))
    raise DataFormatError(path, f"unsupported file type {suffix or '(none)'!r} (expected .jsonl, .csv, .json or .pt)")


def _load_csv_dataset(path: PathLike, image_root: PathLike | None, on_missing: OnMissing) -> LoadedDataset:
    columns = set(_read_csv_header(path))
    if columns.issuperset(NEGATION_COLUMNS):
        return LoadedDataset("negation_csv", read_negation_csv(path, image_root, on_missing=on_missing))
    if columns.issuperset(NEGBENCH_MCQ_COLUMNS):
        return LoadedDataset("negbench_mcq", read_negbench_mcq_csv(path, image_root, on_missing=on_missing))
    if columns.issuperset(NEGBENCH_RETRIEVAL_COLUMNS):
        records = read_negbench_retrieval_records(path, image_root, on_missing=on_missing)
        return LoadedDataset("negbench_retrieval", records)
    raise DataFormatError(
        path,
        "unrecognised CSV columns (expected the project's columns "
        f"({', '.join(NEGATION_COLUMNS)}), NegBench multiple choice ({', '.join(NEGBENCH_MCQ_COLUMNS)}, ...) "
        f"or NegBench retrieval ({', '.join(NEGBENCH_RETRIEVAL_COLUMNS)}))",
        line=1,
    )


def _load_json_dataset(path: PathLike, image_root: PathLike | None, on_missing: OnMissing) -> LoadedDataset:
    data = read_json(path)
    annotations = _json_list(path, data, "annotations")
    if any(isinstance(annotation, dict) and "updated_caption" in annotation for annotation in annotations):
        items = _resolve(_negationclip_items(path, data), image_root, Path(path).parent, on_missing, path)
        return LoadedDataset("negationclip_json", items)
    records = _coco_records(path, data, None, image_root, None, on_missing)
    return LoadedDataset("coco_captions", records)


def retrieval_items(records: Iterable[ImageRecord]) -> list[RetrievalItem]:
    """Turn ImageRecords into RetrievalItems (image and captions only)."""
    return [RetrievalItem(record.image, list(record.captions)) for record in records]

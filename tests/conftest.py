"""Fixtures shared by the tests: the folder of real data files kept next to the repository."""

from pathlib import Path

import pytest

from negclip.data import NegationExample, write_jsonl

OBJECTS = ["dog", "car", "person", "cat", "bus", "pizza", "horse", "boat"]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder, ../shared/data from the repository root. Tests skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}; these tests read real files from it")
    return SHARED_DATA


@pytest.fixture(scope="session")
def coco_neg(shared_data: Path) -> Path:
    """The COCO val2017 negation subset: images/, annotations/ and negbench/."""
    folder = shared_data / "coco-val2017-neg"
    if not folder.is_dir():
        pytest.skip(f"COCO negation subset not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def photo_paths(coco_neg: Path) -> list[Path]:
    """The real COCO photos, sorted by file name."""
    return sorted((coco_neg / "images").glob("*.jpg"))


def write_negation_file(paths: list[Path], caption_format: str, path: Path) -> Path:
    """Write one negation example per photo to a JSONL file and return its path.

    Photo i shows OBJECTS[i % 8] and lacks OBJECTS[(i + 3) % 8]; `caption_format` takes {present} and {index}.
    """
    examples = []
    for index, photo in enumerate(paths):
        present, absent = OBJECTS[index % 8], OBJECTS[(index + 3) % 8]
        caption = caption_format.format(present=present, index=index)
        examples.append(
            NegationExample(
                image=str(photo),
                caption=caption,
                presence_negated=f"{caption}, but there is no {present}",
                absence_negated=f"{caption}, but there is no {absent}",
                present_object=present,
                absent_object=absent,
                objects=[present],
                absent_objects=[absent],
            )
        )
    write_jsonl(examples, path)
    return path

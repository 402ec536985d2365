"""Fixtures shared by the tests: the folder of real data files kept next to the repository."""

from pathlib import Path

import pytest

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

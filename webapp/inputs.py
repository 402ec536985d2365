"""Checks on what users type and upload: captions, photos, data files and zip archives of images.

Every check raises InputError, ImageLoadError, DataFormatError or MissingImagesError, whose message the page
shows as is, so each names the input and the fix.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from negclip.data import DataFormatError, LoadedDataset, MissingImagesError, load_dataset_file
from negclip.encode import tokenize
from negclip.images import ImageLoadError, load_image
from negclip.models import MAX_TEXT_LENGTH

MAX_CAPTIONS = 24
# Far beyond CLIP's 77 tokens (roughly 300 characters of English); longer lines are rejected before tokenizing.
MAX_CAPTION_CHARACTERS = 1000
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_UNCOMPRESSED_BYTES = 2 * 1024**3
DATA_SUFFIXES = (".jsonl", ".csv", ".json")
DECODE_CHECKED_IMAGES = 50


class InputError(ValueError):
    """Invalid user input; the message names the problem and the fix."""


@dataclass
class CaptionList:
    captions: list[str]
    notes: list[str]  # what was dropped or truncated, for a warning in the page


def parse_captions(text: str | None, tokenizer=None, max_captions: int = MAX_CAPTIONS) -> CaptionList:
    """Split text into one caption per line, dropping empty lines and repeats.

    Raises InputError when no caption is left, when there are more than `max_captions`, or when a line is
    over MAX_CAPTION_CHARACTERS. With a tokenizer, captions over 77 tokens are reported (CLIP truncates them).
    """
    lines = (text or "").splitlines()
    captions: list[str] = []
    notes: list[str] = []
    repeated = 0
    for number, line in enumerate(lines, start=1):
        caption = " ".join(line.split())
        if not caption:
            continue
        if len(caption) > MAX_CAPTION_CHARACTERS:
            raise InputError(
                f"caption on line {number} has {len(caption):,} characters, over the limit of "
                f"{MAX_CAPTION_CHARACTERS:,}; CLIP reads only the first {MAX_TEXT_LENGTH} tokens, so shorten it"
            )
        if caption in captions:
            repeated += 1
            continue
        captions.append(caption)
    if not captions:
        raise InputError("no captions given; type at least one caption, one per line")
    if len(captions) > max_captions:
        raise InputError(f"{len(captions)} captions given, over the limit of {max_captions}; remove some lines")
    if repeated:
        notes.append(f"{repeated} repeated caption(s) were ignored")
    if tokenizer is not None:
        truncated = tokenize(tokenizer, captions).truncated
        if truncated:
            notes.append(
                f"{truncated} caption(s) are longer than CLIP's {MAX_TEXT_LENGTH} tokens and were scored on their "
                "first 77 tokens only"
            )
    return CaptionList(captions, notes)


def _replace_server_paths(message: str, shown_names: dict[str, str]) -> str:
    """Replace each server path in `message` with the name the user knows it by; longest paths first."""
    for server_path in sorted(shown_names, key=len, reverse=True):
        message = message.replace(server_path, shown_names[server_path])
    return message


def check_photo(path: str | None) -> str:
    """Return the path of an uploaded photo after decoding it once.

    Raises InputError, or ImageLoadError whose message names the file by its own name, not the server path
    that Gradio stored it under.
    """
    if not path:
        raise InputError("no photo given; upload a photo or click one of the example photos")
    try:
        load_image(path)
    except ImageLoadError as error:
        raise ImageLoadError(_replace_server_paths(str(error), {str(path): Path(path).name})) from error
    return str(path)


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Say why a zip member must not be extracted, or return None when it is safe."""
    name = info.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in path.parts:
        return "leads outside the archive's folder (it contains '..')"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    return None


def extract_zip(archive: str | Path, destination: str | Path) -> Path:
    """Extract a zip of images (and data files) into `destination`, refusing unsafe archives.

    Rejects the whole archive, before writing anything, when a member has an absolute path, a '..' part or
    is a symbolic link, or when it contains more than MAX_ZIP_MEMBERS files or more than
    MAX_ZIP_UNCOMPRESSED_BYTES once extracted (a zip bomb).
    """
    archive = Path(archive)
    destination = Path(destination)
    if not zipfile.is_zipfile(archive):
        raise InputError(f"{archive.name} is not a zip archive; upload a .zip file of the images")
    with zipfile.ZipFile(archive) as opened:
        members = opened.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise InputError(f"{archive.name} contains {len(members):,} files, over the limit of {MAX_ZIP_MEMBERS:,}")
        total = sum(member.file_size for member in members)
        if total > MAX_ZIP_UNCOMPRESSED_BYTES:
            raise InputError(
                f"{archive.name} would extract to {total / 1024**3:.1f} GB, over the limit of "
                f"{MAX_ZIP_UNCOMPRESSED_BYTES / 1024**3:.0f} GB"
            )
        for member in members:
            problem = _member_problem(member)
            if problem:
                raise InputError(
                    f"{archive.name} was rejected: member {member.filename!r} {problem}; zip the images with "
                    "paths relative to one folder"
                )
        destination.mkdir(parents=True, exist_ok=True)
        root = destination.resolve()
        for member in members:
            target = (destination / member.filename).resolve()
            if not target.is_relative_to(root):  # checked above; kept as a second guard against odd names
                raise InputError(f"{archive.name} was rejected: member {member.filename!r} leads outside the folder")
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with opened.open(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
    return destination


@dataclass
class UploadedData:
    """A data file uploaded by a user, its images, and what the readers found in it."""

    path: Path
    image_root: Path | None
    format: str
    count: int

    def describe(self) -> str:
        return f"{self.path.name}: {self.count} {self.format.replace('_', ' ')} items"


def _find_data_file(folder: Path) -> Path:
    found = sorted(
        path for path in folder.rglob("*") if path.suffix.lower() in DATA_SUFFIXES and not path.name.startswith(".")
    )
    if not found:
        raise InputError(
            "the zip contains no data file; add a .jsonl or .csv (the project's columns, or a NegBench CSV) or "
            "upload the data file separately"
        )
    if len(found) > 1:
        names = ", ".join(str(path.relative_to(folder)) for path in found[:5])
        raise InputError(f"the zip contains several data files ({names}); upload the one to use separately")
    return found[0]


def load_upload(data_file: str | None, images_zip: str | None, folder: str | Path) -> UploadedData:
    """Copy an uploaded data file and zip of images into `folder` and read them once to check them.

    The data file may also come inside the zip. Image paths in the data are resolved against the zip's
    contents. Raises InputError with the fix, naming files by their uploaded names and their paths inside
    the zip, never by their server paths.
    """
    if not data_file and not images_zip:
        raise InputError("no files uploaded; upload a .jsonl or .csv data file and a .zip of its images")
    folder = Path(folder)
    shown_names = {str(folder / "images") + "/": "", str(folder) + "/": "", str(folder): "the upload"}
    for upload in (data_file, images_zip):
        if upload:
            shown_names[str(upload)] = Path(upload).name
    try:
        return _load_upload(data_file, images_zip, folder)
    except (DataFormatError, MissingImagesError, ImageLoadError, InputError) as error:
        raise InputError(_replace_server_paths(str(error), shown_names)) from error


def _load_upload(data_file: str | None, images_zip: str | None, folder: Path) -> UploadedData:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    image_root = None
    if images_zip:
        if Path(images_zip).suffix.lower() != ".zip":
            raise InputError(f"{Path(images_zip).name} is not a .zip file; upload the images as one .zip archive")
        image_root = extract_zip(images_zip, folder / "images")

    if data_file:
        source = Path(data_file)
        if source.suffix.lower() not in DATA_SUFFIXES:
            raise InputError(
                f"{source.name} is not a data file; upload a .jsonl or .csv (or a COCO-style .json) file"
            )
        path = folder / source.name
        shutil.copyfile(source, path)
    else:
        path = _find_data_file(image_root)

    loaded: LoadedDataset = load_dataset_file(path, image_root or path.parent, on_missing="raise")
    if not loaded.items:
        raise InputError(f"{path.name} contains no rows; add at least one example")
    # The readers checked that every image exists; decoding is checked on a sample to keep uploads quick.
    for item in loaded.items[:DECODE_CHECKED_IMAGES]:
        load_image(item.image)
    return UploadedData(path, image_root or path.parent, loaded.format, len(loaded.items))

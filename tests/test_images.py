"""The safe photo loader on real COCO photos turned into the awkward files users upload."""

import numpy as np
import pytest
import torch
from PIL import Image

from negclip.images import ImageLoadError, ImagePreprocessor, image_bytes_hash, image_from_bytes, load_image


@pytest.fixture()
def photo(photo_paths):
    return Image.open(photo_paths[0]).convert("RGB")


def test_load_image_real_photo(photo_paths):
    image = load_image(photo_paths[0])
    assert image.mode == "RGB"
    assert min(image.size) > 100


def test_load_image_cmyk(photo, tmp_path):
    path = tmp_path / "cmyk.jpg"
    photo.convert("CMYK").save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == photo.size


def test_load_image_16_bit(photo, tmp_path):
    grey = np.asarray(photo.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    path = tmp_path / "grey16.png"
    Image.fromarray(grey).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    # Scaling by the maximum keeps the picture instead of clipping every pixel to white.
    assert 20 < np.asarray(image).mean() < 235


def test_load_image_alpha_over_white(tmp_path):
    transparent = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    path = tmp_path / "alpha.png"
    transparent.save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_load_image_exif_rotation(photo, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    photo.save(path, exif=exif)
    image = load_image(path)
    assert image.size == (photo.height, photo.width)


def test_load_image_corrupt_and_truncated(photo_paths, tmp_path):
    data = photo_paths[0].read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match="truncated.jpg"):
        load_image(truncated)

    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is a caption file, not a photo")
    with pytest.raises(ImageLoadError, match="not an image file"):
        load_image(not_image)

    with pytest.raises(ImageLoadError, match="image not found"):
        load_image(tmp_path / "missing.jpg")


def test_load_image_rejects_oversized(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(path, max_pixels=1_000_000)


def test_image_from_bytes_names_upload(photo_paths):
    with pytest.raises(ImageLoadError, match="upload.png"):
        image_from_bytes(b"\x89PNG broken", name="upload.png")
    assert image_from_bytes(photo_paths[1].read_bytes()).mode == "RGB"


def test_preprocessor_shape_and_normalisation(photo):
    pixel_values = ImagePreprocessor(image_size=224)([photo, photo.rotate(90, expand=True)])
    assert pixel_values.shape == (2, 3, 224, 224)
    assert pixel_values.dtype == torch.float32
    # Normalised values of natural photos sit within a few standard deviations of zero.
    assert -3 < pixel_values.mean().item() < 3
    assert pixel_values.min().item() >= (0 - 0.49) / 0.26 - 1e-3


def test_image_hash_follows_pixels(photo):
    assert image_bytes_hash(photo) == image_bytes_hash(photo.copy())
    assert image_bytes_hash(photo) != image_bytes_hash(photo.rotate(180))


def test_preprocessor_long_strip_matches_full_resize(photo):
    """A strip past the resize limit takes the cropped-region path and stays within one intensity level."""
    preprocess = ImagePreprocessor(image_size=32)
    strip = photo.resize((600, 20))  # resizes to 960 x 32, over 4 x 32
    width, height = strip.size
    long_side = int(32 * width / height)
    full = strip.resize((long_side, 32), Image.Resampling.BICUBIC)
    left = (long_side - 32) // 2
    expected = np.asarray(full.crop((left, 0, left + 32, 32)), dtype=np.float32) / 255.0
    got = preprocess([strip])[0] * preprocess.std + preprocess.mean  # undo the normalisation
    assert np.abs(got.permute(1, 2, 0).numpy() - expected).max() <= 1 / 255 + 1e-6


def test_preprocessor_thin_strip_small_output():
    strip = Image.new("RGB", (20_000, 1), (200, 10, 10))
    pixel_values = ImagePreprocessor(image_size=224)([strip])
    assert pixel_values.shape == (1, 3, 224, 224)


def test_load_image_folder_named(tmp_path):
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)

"""Read photos safely and turn them into CLIP pixel values."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# OpenAI CLIP's normalisation, as in openai/clip-vit-base-patch32's preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Pillow raises DecompressionBombError past twice this many pixels and warns past it; 8,000 x 8,000 covers
# every camera photo while a crafted 50,000 x 50,000 PNG is rejected before it is decoded.
MAX_IMAGE_PIXELS = 64_000_000


class ImageLoadError(ValueError):
    """A file could not be read as a photo."""


def load_image(source: str | os.PathLike | BinaryIO | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a photo as 8-bit RGB, turned upright by its EXIF orientation.

    CMYK, 16-bit, palette and alpha images are converted (alpha over white). Raises ImageLoadError naming the
    file for missing, corrupt, truncated, non-image and oversized files.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    label = str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "uploaded file")
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        raise ImageLoadError(f"{label} is a folder, not an image file; pass the path of a photo")
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise ImageLoadError(f"image not found: {label}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"image too large: {label} is {width} x {height} pixels, over the limit of "
                        f"{max_pixels:,}; resize it first"
                    )
                image.load()
                return _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"image too large: {label} ({error}); resize it first") from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(f"not an image file: {label}; upload a JPEG, PNG or WebP photo") from error
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageLoadError):
            raise
        raise ImageLoadError(f"corrupt or truncated image: {label} ({error})") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16- and 32-bit greyscale: scale the used range to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        image = Image.fromarray((array / top * 255.0).round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        background.alpha_composite(image.convert("RGBA"))
        image = background
    return image.convert("RGB")


def image_bytes_hash(image: Image.Image) -> str:
    """Hash the decoded pixels, so one photo uploaded twice under two names shares its cache entry."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


# Above this ratio of resized long side to crop size, only the cropped region is resized.
MAX_RESIZED_SIDE_FACTOR = 4


class ImagePreprocessor:
    """CLIP preprocessing: resize the short side (bicubic), centre-crop, scale to [0, 1], normalise."""

    def __init__(self, image_size: int = 224, mean=CLIP_MEAN, std=CLIP_STD):
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """Return pixel_values of shape (batch, 3, image_size, image_size)."""
        return torch.stack([self._one(image) for image in images])

    def _one(self, image: Image.Image) -> torch.Tensor:
        size = self.image_size
        width, height = image.size
        # The long side is truncated, not rounded, as in transformers' CLIPImageProcessor and torchvision's Resize,
        # so that pixel values equal those of the reference preprocessing.
        long_side = int(size * max(width, height) / min(width, height))
        resized_width, resized_height = (size, long_side) if width <= height else (long_side, size)
        left = (resized_width - size) // 2
        top = (resized_height - size) // 2
        if long_side <= MAX_RESIZED_SIDE_FACTOR * size:
            resized = image.resize((resized_width, resized_height), Image.Resampling.BICUBIC)
            cropped = resized.crop((left, top, left + size, top + size))
        else:
            # A long strip (8000 x 1 would resize to 1,792,000 x 224) resizes only the source region that the
            # crop keeps. PIL's filter still reads the pixels around that region, so pixels stay within one
            # intensity level of a full resize and crop.
            scale_x, scale_y = width / resized_width, height / resized_height
            box = (left * scale_x, top * scale_y, (left + size) * scale_x, (top + size) * scale_y)
            cropped = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
        pixels = torch.from_numpy(np.asarray(cropped, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (pixels - self.mean) / self.std


def image_from_bytes(data: bytes, name: str = "uploaded file") -> Image.Image:
    """Decode an in-memory upload with the same checks as load_image."""
    stream = io.BytesIO(data)
    stream.name = name
    return load_image(stream)

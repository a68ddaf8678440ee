"""Images as model inputs, preprocessed as the model's own preprocessor_config.json says (resize, center crop,
rescale, normalize), with Pillow and numpy only: no torch at validation time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeq.errors import DataError, ModelError

RESAMPLE_DEFAULT = 2  # bilinear, as Hugging Face's image processors


class ImageInputs:
    """Loads image files into `pixel_values` [B, 3, H, W] float32."""

    def __init__(self, model_dir: Path):
        file = Path(model_dir) / "preprocessor_config.json"
        if not file.is_file():
            raise ModelError(
                f"no preprocessor_config.json in '{model_dir}'",
                "An image model's folder needs its image processor's settings",
            )
        self.config = json.loads(file.read_text(encoding="utf-8"))
        self.sequence_length = 0  # images have no sequence dimension
        self.pad_to_length = False

    def for_length(self, sequence_length: int) -> ImageInputs:
        return self

    def encode(self, paths: list[str]) -> dict[str, np.ndarray]:
        return {"pixel_values": np.stack([self.load(Path(p)) for p in paths]).astype(np.float32)}

    def load(self, path: Path) -> np.ndarray:
        image = open_image(path)
        c = self.config
        if c.get("do_resize", True):
            image = self._resize(image)
        if c.get("do_center_crop") and c.get("crop_size"):
            height, width = _size(c["crop_size"])
            left, top = (image.width - width) // 2, (image.height - height) // 2
            image = image.crop((left, top, left + width, top + height))
        pixels = np.asarray(image, dtype=np.float32)
        if c.get("do_rescale", True):
            pixels = pixels * float(c.get("rescale_factor", 1 / 255))
        if c.get("do_normalize", True):
            pixels = (pixels - np.array(c.get("image_mean", [0.5] * 3), np.float32)) / np.array(
                c.get("image_std", [0.5] * 3), np.float32
            )
        return pixels.transpose(2, 0, 1)

    def _resize(self, image):
        size, resample = (
            self.config.get("size", {"height": 224, "width": 224}),
            self.config.get("resample", RESAMPLE_DEFAULT),
        )
        if isinstance(size, dict) and "shortest_edge" in size:
            edge = size["shortest_edge"]
            if "crop_pct" in self.config and edge < 384:  # ConvNeXt-style: resize up, then crop back to `edge`
                edge = int(edge / self.config["crop_pct"])
            scale = edge / min(image.width, image.height)
            return image.resize((round(image.width * scale), round(image.height * scale)), resample=resample)
        height, width = _size(size)
        return image.resize((width, height), resample=resample)


def open_image(path: Path):
    """An RGB Pillow image, or a DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(
            f"'{path}' is not an image Pillow can read ({type(exc).__name__})",
            "Keep only image files in the image folder",
        ) from None


def list_images(path: Path, key: str) -> list[tuple[str, str | None]]:
    """(image path, label) pairs: a folder's sub-folders are labels, files directly inside have none; a .txt
    lists image paths (relative to the file), one a line."""
    if path.is_dir():
        found = []
        for item in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            relative = item.relative_to(path)
            found.append((str(item), relative.parts[0] if len(relative.parts) > 1 else None))
        if not found:
            raise DataError(f"{key}: image folder '{path}' is empty", "Put images in it, in sub-folders named by label")
        return found
    from edgeq.data import read_text_file

    lines = [line.strip() for line in read_text_file(path, key).splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{key}: file '{path}' lists no images")
    return [(str((path.parent / line).resolve()), None) for line in lines]


def _size(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size["height"]), int(size["width"])

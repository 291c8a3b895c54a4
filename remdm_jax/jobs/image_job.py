"""Sampling images from a MaskGIT-family model to PNG files (`remdm-images`).

The model is a MaskGIT folder (`remdm_jax.weights.maskgit_io`): the shipped MNIST model, one
trained here (`train/mnist_model.py`) or a released MaskGIT folder. Each image is decoded
from the prompt `[class token, masks]` by MaskGIT's decoder (`MaskGitDecoderConfig`) or by any
sampler config (`SamplerConfig`: MDLM or a ReMDM strategy), optionally under classifier-free
guidance against the model's null class, then turned into pixels by the folder's image
tokenizer. Image `i` draws from `fold_in(key(seed), i)` alone, so an image does not depend on
the batch size. The job writes `OUT/grid.png`, `OUT/image_NNNNN_class_C.png` per image and
`OUT/images.json` (each image's class and tokens, and the settings).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import NamedTuple

import jax
import numpy as np
from tqdm import tqdm

from remdm_jax import families, files
from remdm_jax.guidance import classifier_free_guidance
from remdm_jax.images.png import image_grid, to_uint8, write_png
from remdm_jax.jobs.sample_job import shipped_models
from remdm_jax.models.maskgit import MaskGit, as_denoiser, image_prompt
from remdm_jax.sampling.sampler import make_sampler
from remdm_jax.validation import check_choice, check_fields, check_range, option
from remdm_jax.weights import maskgit_io

SHIPPED_IMAGE_MODEL = shipped_models() / "mnist-maskgit"
DECODERS = ("maskgit", "sampler")


@dataclasses.dataclass(frozen=True)
class ImageJobConfig:
  """What to sample and where to write it."""

  model: str = option(str(SHIPPED_IMAGE_MODEL), "a MaskGIT folder: the shipped MNIST model, "
                                                "one trained here, or a released one")
  out: str = option("images", "folder for grid.png, one PNG per image and images.json")
  decoder: str = option("maskgit", "maskgit (options --maskgit.*) or sampler (--sampler.*: "
                                   "MDLM or a ReMDM strategy)")
  labels: str = option("", "comma-separated classes, one image each; empty: num_images "
                           "images of the classes in turn")
  num_images: int = option(20, "images when labels is empty")
  guidance: float = option(1.0, "classifier-free guidance strength (1: none; needs the "
                                "model's null class)")
  seed: int = option(0, "image i draws from fold_in(key(seed), i)")
  batch_size: int = option(100, "images per sampler call")
  columns: int = option(10, "images per row of grid.png")
  scale: int = option(2, "each pixel as scale x scale pixels in the PNG files")

  def __post_init__(self):
    check_fields(self)
    check_choice("decoder", self.decoder, DECODERS)
    for name in ("num_images", "batch_size", "columns", "scale"):
      check_range(name, getattr(self, name), 1)
    check_range("seed", self.seed, 0)
    check_range("guidance", self.guidance, 0.0)


class ImageResult(NamedTuple):
  """The sampled images: `labels [N] int32`, `tokens [N, T] int32` (the image codes),
  `pixels [N, H, W, C] uint8` and the folder written."""

  labels: np.ndarray
  tokens: np.ndarray
  pixels: np.ndarray
  out: pathlib.Path


def image_labels(job: ImageJobConfig, model: MaskGit) -> np.ndarray:
  """`[N] int32`: the job's classes, or `num_images` of the model's classes in turn (its null
  class left out).

  Raises:
    ValueError: a label that is not an integer class of the model.
  """
  cfg = model.cfg
  if job.labels:
    try:
      labels = np.asarray([int(part) for part in job.labels.split(",")], np.int32)
    except ValueError:
      raise ValueError(f"labels must be comma-separated integers, got {job.labels!r}") from None
    if labels.min() < 0 or labels.max() >= cfg.num_classes:
      raise ValueError(f"labels must lie in [0, {cfg.num_classes}), got {job.labels!r}")
    return labels
  classes = [c for c in range(cfg.num_classes) if c != cfg.null_class]
  if not classes:
    raise ValueError("the model's only class is its null class; there is no class to ask for")
  return np.asarray([classes[i % len(classes)] for i in range(job.num_images)], np.int32)


def image_denoiser(model: MaskGit, guidance: float):
  """The model's denoiser; with `guidance != 1`, classifier-free guidance against its null
  class.

  Raises:
    ValueError: guidance asked of a model without a null class.
  """
  if guidance == 1.0:
    return as_denoiser(model)
  if model.cfg.null_class is None:
    raise ValueError("guidance needs a model trained with a null class (its maskgit.json "
                     "names none); use guidance=1")
  unconditional = as_denoiser(model, label=model.cfg.null_class)
  return classifier_free_guidance(as_denoiser(model), unconditional, guidance)


def decode_tokens(key: jax.Array, denoiser, config, cfg, labels: np.ndarray, batch_size: int,
                  progress: bool = False) -> np.ndarray:
  """Image codes `[N, T] int32` for the classes `labels [N]`: row `i` decoded from
  `fold_in(key, i)` (the last batch padded with copies of its last row)."""
  size = min(batch_size, len(labels))
  sampler = make_sampler(denoiser, config, batch_size=size, seq_len=cfg.seq_len,
                         mask_id=cfg.mask_id)
  rows = []
  for start in tqdm(range(0, len(labels), size), desc="images", unit="batch",
                    disable=not progress):
    chunk = labels[start:start + size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk))])
    tokens = sampler(key, prompt=image_prompt(cfg, padded), first_index=start)
    rows.append(np.asarray(tokens)[:len(chunk), 1:])
  return np.concatenate(rows)


def _upscaled(pixels: np.ndarray, scale: int) -> np.ndarray:
  return pixels.repeat(scale, axis=1).repeat(scale, axis=2)


def sample_images(decoder_config, job: ImageJobConfig, *, progress: bool = True) -> ImageResult:
  """Samples the job's images and writes them (see the module docstring).

  Raises:
    ValueError: a folder that is not a MaskGIT folder, bad labels, or guidance without a null
      class.
  """
  family = families.for_folder(job.model)
  if family.name != "maskgit":
    raise ValueError(f"{job.model} is a {family.name!r} model; remdm-images samples MaskGIT "
                     "folders")
  model = family.load(pathlib.Path(job.model))
  tokenizer = family.tokenizer(pathlib.Path(job.model))
  maskgit_io.check_fit(model.cfg, tokenizer, job.model)
  labels = image_labels(job, model)
  tokens = decode_tokens(jax.random.key(job.seed), image_denoiser(model, job.guidance),
                         decoder_config, model.cfg, labels, job.batch_size, progress)
  pixels = to_uint8(np.concatenate([np.asarray(tokenizer.decode_tokens(tokens[i:i + 256]))
                                    for i in range(0, len(tokens), 256)]))
  out = pathlib.Path(job.out)
  out.mkdir(parents=True, exist_ok=True)
  shown = _upscaled(pixels, job.scale)
  write_png(out / "grid.png", image_grid(shown, job.columns))
  for index, (label, image) in enumerate(zip(labels, shown)):
    write_png(out / f"image_{index:05d}_class_{label}.png", image)
  files.write_atomic(out / "images.json", json.dumps({
      "model": str(pathlib.Path(job.model).absolute()), "job": dataclasses.asdict(job),
      "decoder": decoder_config.options(),
      "images": [{"index": i, "class": int(c), "tokens": t.tolist()}
                 for i, (c, t) in enumerate(zip(labels, tokens))]}) + "\n")
  return ImageResult(labels, tokens, pixels, out)

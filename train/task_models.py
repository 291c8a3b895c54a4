"""Train a task model (a small LLaDA-architecture model) on Countdown or Sudoku.

  python train/task_models.py --recipe=sudoku --workdir=runs/sudoku [--install checkpoints]
  python train/task_models.py --recipe=countdown --workdir=runs/countdown --train.steps=3000
  python train/task_models.py --recipe=sudoku --workdir=runs/sudoku-8b \
      --init-from=LLaDA-8B-Instruct/ --train.batch_size=8 --train.learning_rate=1e-5

The recipes (tasks, row format, model size) are `remdm_jax.jobs.task_models.RECIPES`; the
`--train.*` flags are `remdm-train`'s (objective llada_sft by default; --train.objective=mdlm
or remdm trains the answer's NELBO instead). Rerunning the same command resumes. With
`--install`, the exported model, its training config and metrics are copied to
`INSTALL/<recipe>-llada`.
"""

import argparse
import json
import pathlib
import shutil
import sys

from remdm_jax.cli import ScriptParser, UsageError, parse_sections
from remdm_jax.errors import run_cli
from remdm_jax.jobs import task_models
from remdm_jax.training.loop import TrainConfig
from remdm_jax.training.objectives import SftObjective

DEFAULTS = {"objective": SftObjective(), "learning_rate": 1e-3, "warmup_steps": 200,
            "batch_size": 64, "steps": 3_000, "eval_every": 500, "save_every": 250,
            "log_every": 25}


def _main(argv: list[str]) -> int:
  parser = ScriptParser(description=__doc__, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--recipe", required=True, choices=sorted(task_models.RECIPES))
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--data-seed", type=int, default=0)
  parser.add_argument("--install", default="", help="folder to copy the trained model to")
  parser.add_argument("--init-from", default=None,
                      help="a LLaDA folder to fine-tune (a released one: its tokenizer too)")
  args, rest = parser.parse_known_args(argv)
  configs, unknown = parse_sections(rest, {"train": TrainConfig(**DEFAULTS)})
  if unknown:
    raise UsageError(f"unexpected arguments {unknown}; see --help")
  recipe = task_models.recipe(args.recipe)
  model = task_models.train_task_model(recipe, configs["train"], args.workdir,
                                       data_seed=args.data_seed, init_from=args.init_from)
  if args.install and model.is_dir():
    target = pathlib.Path(args.install) / f"{args.recipe}-llada"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(model, target)
    workdir = pathlib.Path(args.workdir)
    shutil.copy(workdir / "metrics.jsonl", target / "training_metrics.jsonl")
    record = json.loads((workdir / "config.json").read_text())
    (target / "training_config.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"installed {target}")
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(_main, sys.argv[1:]))

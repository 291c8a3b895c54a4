"""Retraining ablation on a reasoning task: the ReMDM paper's Table 4 on an exact metric.

Task models of one recipe (`remdm_jax.jobs.task_models.RECIPES`) are trained on the answer
given the prompt with MDLM's continuous-time NELBO and with ReMDM's (eq. 9, T = 4,096,
sigma = min(eta_cap, sigma_max), eta_cap = 1), on the same data with the same steps, batch
and seeds. Every model is scored on held-out test examples of each task of the recipe by
exact accuracy (the default decoder) and by two bounds on the answers: the continuous MDLM
NELBO (nats per answer token, the same noise for every model: the column comparable across
objectives) and the model's own training bound. Writes OUT/table.md and OUT/scores.json.
Reruns resume: finished runs and their scores are read back.

  python train/task_ablation.py --recipe=sudoku --workdir=runs/ablation \\
      --out=results/sudoku_ablation --steps=200 --seeds 0 1 2
"""

import argparse
import json
import pathlib
import shutil
import sys

import numpy as np

from remdm_jax import families, files
from remdm_jax.cli import ScriptParser, UsageError
from remdm_jax.errors import run_cli
from remdm_jax.jobs import ranking, task_models
from remdm_jax.tasks import base as task_base
from remdm_jax.training import objectives
from remdm_jax.training.loop import TrainConfig

OBJECTIVES = {
    "mdlm": objectives.MdlmObjective(),
    "remdm_cap1": objectives.RemdmObjective(discrete_steps=4_096, sigma_rule="cap", eta=1.0),
}
BASELINE = "mdlm"
TEST_SEED = 10_000      # test examples of task k: task.generate(TEST_SEED + k, n, "test")
NOISE_SEED = 20_000     # the bounds' noise, the same for every model


def _check_settings(args) -> None:
  """Records the recipe, steps, batch and test size in WORKDIR/ablation.json on the first run;
  refuses a rerun with other ones (its runs and scores would not match).

  Raises:
    UsageError: a setting differs from the recorded one (naming it).
  """
  path = pathlib.Path(args.workdir) / "ablation.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  settings = {"recipe": args.recipe, "steps": args.steps, "batch_size": args.batch_size,
              "test": args.test}
  for name, (recorded, value) in files.record_or_compare(path, settings,
                                                         "ablation settings").items():
    raise UsageError(f"--{name.replace('_', '-')}={value} differs from the {recorded!r} this "
                     f"workdir was run with ({path}); use another --workdir")


def _shared_data(recipe, workdir: pathlib.Path) -> pathlib.Path:
  """WORKDIR/data/{train,valid}.jsonl, generated once (data seed 0) for every run."""
  folder = workdir / "data"
  folder.mkdir(parents=True, exist_ok=True)
  for split in ("train", "valid"):
    if not (folder / f"{split}.jsonl").is_file():
      task_base.write_examples(folder / f"{split}.jsonl", recipe.examples(split, 0))
  return folder


def _bounds(model, mask_id: int, objective, rows) -> tuple[float, float]:
  """(continuous MDLM NELBO, the model's own bound) of every answer in `rows`, nats per
  answer token, 4 noise draws per batch (batches of the largest size <= 64 dividing N)."""
  count = len(rows["tokens"])
  size = next(d for d in range(min(64, count), 0, -1) if count % d == 0)
  return tuple(objectives.held_out_loss(objectives.model_loss(model, o, mask_id), rows, size,
                                        seed=NOISE_SEED, draws=4)
               for o in (objectives.MdlmObjective(), objective))


def _run(args, recipe, name: str, seed: int, tests) -> dict | None:
  """Trains (or resumes) one model and scores it; None when the run stopped early."""
  run_dir = pathlib.Path(args.workdir) / f"{name}-seed{seed}"
  kept = run_dir / "ablation_scores.json"
  if kept.is_file():
    return json.loads(kept.read_text())
  if not (run_dir / "data").is_dir():
    shutil.copytree(_shared_data(recipe, pathlib.Path(args.workdir)), run_dir / "data")
  cfg = TrainConfig(objective=OBJECTIVES[name], learning_rate=1e-3,
                    warmup_steps=min(200, args.steps // 5), batch_size=args.batch_size,
                    steps=args.steps, eval_every=0, save_every=100, log_every=25, seed=seed)
  model = task_models.train_task_model(recipe, cfg, run_dir, progress=False)
  if not (model / task_models.FORMAT_FILE).is_file():
    return None
  task_model = task_models.load_task_model(model)
  family = families.for_folder(model)
  network = family.load(model)
  scores = {"objective": name, "seed": seed, "options": OBJECTIVES[name].options(),
            "correct": [], "nelbo": [], "own_bound": []}
  for task, examples in zip(recipe.tasks, tests):
    scored = task_models.score(task, task_model, examples)
    rows = recipe.rows.training_rows(task_model.tokenizer, examples)
    nelbo, own = _bounds(network, task_model.tokenizer.mask_id, OBJECTIVES[name], rows)
    scores["correct"].append(scored.correct.tolist())
    scores["nelbo"].append(nelbo)
    scores["own_bound"].append(own)
    print(f"{name} seed {seed} {task.options()}: accuracy {scored.accuracy:.3f}, MDLM NELBO "
          f"{nelbo:.4f}, own bound {own:.4f}", flush=True)
  files.write_atomic(kept, json.dumps(scores) + "\n")
  return scores


def table(runs: list[dict], task_names: list[str]) -> str:
  """The Markdown table: per test set and objective, accuracy over seeds (95% Student-t and
  pooled Wilson), McNemar against MDLM on the same (seed, item) pairs, and the bounds (mean
  +- sd over seeds)."""
  by_name = {name: [r for r in runs if r["objective"] == name] for name in OBJECTIVES}
  correct = {(name, k): np.array([r["correct"][k] for r in found], bool)
             for name, found in by_name.items() for k in range(len(task_names))}
  lines = ["| objective | test set | accuracy % | 95% over seeds | Wilson 95% (pooled) | "
           "vs mdlm: +/- | McNemar p | MDLM NELBO | own bound |",
           "|---|---|---|---|---|---|---|---|---|"]
  for row in ranking.table(correct, baseline=BASELINE):
    nelbo, own = (np.array([r[key][row.nfe] for r in by_name[row.method]])
                  for key in ("nelbo", "own_bound"))
    spread = nelbo.std(ddof=1) if len(nelbo) > 1 else float("nan")
    lines.append(f"| {row.method} | {task_names[row.nfe]} | {row.cells(BASELINE)} | "
                 f"{nelbo.mean():.4f} +- {spread:.4f} | {own.mean():.4f} |")
  return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> int:
  parser = ScriptParser(description=__doc__, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--recipe", default="sudoku", choices=sorted(task_models.RECIPES),
                      help="the task recipe (data, row format, model size)")
  parser.add_argument("--workdir", required=True, help="runs and their data (resumed)")
  parser.add_argument("--out", required=True, help="folder for table.md and scores.json")
  parser.add_argument("--steps", type=int, default=200, help="training steps per model")
  parser.add_argument("--batch-size", type=int, default=64, help="training batch")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                      help="training seeds (distinct), each run with every objective")
  parser.add_argument("--test", type=int, default=200, help="test examples per task")
  args = parser.parse_args(argv)
  for name in ("steps", "batch_size", "test"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if len(set(args.seeds)) != len(args.seeds):
    parser.error(f"--seeds must be distinct, got {args.seeds}")
  _check_settings(args)
  recipe = task_models.recipe(args.recipe)
  tests = [task.generate(TEST_SEED + k, args.test, "test") for k, task in enumerate(recipe.tasks)]
  runs = []
  for seed in args.seeds:
    for name in OBJECTIVES:
      found = _run(args, recipe, name, seed, tests)
      if found is None:
        print(f"stopped during {name} seed {seed}; rerun to resume", flush=True)
        return 1
      runs.append(found)
  names = [", ".join(f"{k}={v}" for k, v in task.options().items()) for task in recipe.tasks]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  files.write_atomic(out / "scores.json", json.dumps(
      {"recipe": args.recipe, "steps": args.steps, "batch_size": args.batch_size,
       "test_examples": args.test, "tasks": names, "runs": runs}) + "\n")
  text = table(runs, names) + (
      f"\n{args.recipe} recipe, {args.steps} steps of batch {args.batch_size} per model, "
      f"seeds {args.seeds}, {args.test} held-out test examples per task (seed {TEST_SEED} + "
      "task index), decoded with the default decoder; bounds in nats per answer token.\n")
  files.write_atomic(out / "table.md", text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(_main, sys.argv[1:]))

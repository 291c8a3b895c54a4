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
from remdm_jax.cli import ScriptParser
from remdm_jax.errors import run_cli
from remdm_jax.eval.intervals import mcnemar, pass_at_1, wilson
from remdm_jax.jobs import task_models
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


def _shared_data(recipe, workdir: pathlib.Path) -> pathlib.Path:
  """WORKDIR/data/{train,valid}.jsonl, generated once (data seed 0) for every run."""
  folder = workdir / "data"
  folder.mkdir(parents=True, exist_ok=True)
  for split in ("train", "valid"):
    if not (folder / f"{split}.jsonl").is_file():
      task_base.write_examples(folder / f"{split}.jsonl", recipe.examples(split, 0))
  return folder


def _bounds(folder: pathlib.Path, objective, rows) -> tuple[float, float]:
  """(continuous MDLM NELBO, the model's own bound) of the answers in `rows`, nats per
  answer token, 4 noise draws per batch."""
  family = families.for_folder(folder)
  model = family.load(folder)
  mask_id = family.tokenizer(folder).mask_id
  size = min(64, len(rows["tokens"]))
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
  scores = {"objective": name, "seed": seed, "options": OBJECTIVES[name].options(),
            "correct": [], "nelbo": [], "own_bound": []}
  for task, examples in zip(recipe.tasks, tests):
    scored = task_models.score(task, task_model, examples)
    rows = recipe.rows.training_rows(task_model.tokenizer, examples)
    nelbo, own = _bounds(model, OBJECTIVES[name], rows)
    scores["correct"].append(scored.correct.tolist())
    scores["nelbo"].append(nelbo)
    scores["own_bound"].append(own)
    print(f"{name} seed {seed} {task.options()}: accuracy {scored.accuracy:.3f}, MDLM NELBO "
          f"{nelbo:.4f}, own bound {own:.4f}", flush=True)
  files.write_atomic(kept, json.dumps(scores) + "\n")
  return scores


def table(runs: list[dict], task_names: list[str]) -> str:
  """The Markdown table: per objective and test set, accuracy over seeds (95% Student-t and
  pooled Wilson), McNemar against MDLM on the same (seed, item) pairs, and the bounds."""
  lines = ["| objective | test set | accuracy % | 95% over seeds | Wilson 95% (pooled) | "
           "vs mdlm: +/- | McNemar p | MDLM NELBO (mean +- sd) | own bound |",
           "|---|---|---|---|---|---|---|---|---|"]
  by_name = {name: [r for r in runs if r["objective"] == name] for name in OBJECTIVES}
  for k, task_name in enumerate(task_names):
    base = np.array([r["correct"][k] for r in by_name[BASELINE]], bool)     # [S, N]
    for name, found in by_name.items():
      correct = np.array([r["correct"][k] for r in found], bool)
      summary = pass_at_1(correct)
      low, high = wilson(int(correct.sum()), correct.size)
      nelbo = np.array([r["nelbo"][k] for r in found])
      own = np.mean([r["own_bound"][k] for r in found])
      if name == BASELINE:
        paired = "baseline | "
      else:
        wins, losses, p = mcnemar(correct.ravel(), base.ravel())
        paired = f"+{wins} / -{losses} | " + (f"**{p:.3g}**" if p < 0.05 else f"{p:.3g}")
      spread = "n/a" if summary.seeds < 2 else f"+- {100 * summary.half_width:.1f}"
      lines.append(f"| {name} | {task_name} | {100 * summary.mean:.1f} | {spread} | "
                   f"[{100 * low:.1f}, {100 * high:.1f}] | {paired} | "
                   f"{nelbo.mean():.4f} +- {nelbo.std(ddof=1) if len(nelbo) > 1 else 0:.4f} | "
                   f"{own:.4f} |")
  return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> int:
  parser = ScriptParser(description=__doc__, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--recipe", default="sudoku", choices=sorted(task_models.RECIPES))
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--test", type=int, default=200, help="test examples per task")
  args = parser.parse_args(argv)
  for name in ("steps", "batch_size", "test"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
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

"""Rank decoders on task models at equal numbers of model calls (NFE).

  python sample/rank_decoders.py --task=sudoku --data=sudoku6_test.jsonl \\
      --models runs/sudoku-s0/model runs/sudoku-s1/model runs/sudoku-s2/model \\
      --nfe 0.25 0.5 1 2 --out results/sudoku6

Every decoder of `remdm_jax.jobs.ranking.METHODS` (or those named by `--methods`) decodes every
example with every model at each NFE (`--nfe` as fractions of the model's answer length) and
is verified exactly. Each (model, decoder, NFE) score is kept in OUT/scores/ (a rerun skips
what is done; a file per model folder, so models can be scored one run at a time and the
table made by a last run over all of them). Writes OUT/table.md (accuracy, 95% interval over
the models, i.e. training seeds, the pooled Wilson interval, McNemar's test on the same items
against low_confidence, and how often Fast-dLLM's approximations give the answer of the decoder
they approximate) and OUT/accuracy_vs_nfe.png.
"""

import argparse
import functools
import json
import pathlib
import sys

import numpy as np

from remdm_jax import files
from remdm_jax.cli import ScriptParser, UsageError, check_lows
from remdm_jax.errors import run_cli
from remdm_jax.jobs import ranking, task_models
from remdm_jax.tasks import make_task, read_examples


@functools.cache
def _load(model: pathlib.Path) -> task_models.TaskModel:
  """Each model folder is read once, however many decoders score it."""
  return task_models.load_task_model(model)


def _scores(args, model: pathlib.Path, method: str, nfe: int, examples, task):
  """`(correct [N] bool, predictions)` of one model and decoder, read back when kept."""
  label = "-".join(model.absolute().parts[-2:])        # "run-model": one file per folder
  path = pathlib.Path(args.out) / "scores" / f"{label}_{method}_{nfe}.json"
  if path.is_file():
    saved = json.loads(path.read_text())
    return np.array(saved["correct"], bool), saved["predictions"]
  task_model = _load(model)
  config = ranking.METHODS[method](nfe, task_model.rows.answer_length)
  scored = task_models.score(task, task_model, examples, config, seed=args.seed,
                             batch_size=args.batch_size)
  path.parent.mkdir(parents=True, exist_ok=True)
  files.write_atomic(path, json.dumps({"model": label, "method": method, "nfe": nfe,
                                       "config": config.options(),
                                       "correct": scored.correct.tolist(),
                                       "predictions": scored.predictions}) + "\n")
  print(f"{label} {method:>22} NFE {nfe:>4}: {scored.accuracy:.3f}", flush=True)
  return scored.correct, scored.predictions


def _plot(rows, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figure, axes = plt.subplots(figsize=(7, 4.5))
  for method in dict.fromkeys(r.method for r in rows):
    mine = [r for r in rows if r.method == method]
    accuracy = np.array([100 * r.accuracy for r in mine])
    low, high = (np.array([100 * r.wilson[k] for r in mine]) for k in (0, 1))
    axes.errorbar([r.nfe for r in mine], accuracy, yerr=[accuracy - low, high - accuracy],
                  marker="o", capsize=3, label=method,
                  linewidth=2.5 if method == ranking.BASELINE else 1)
  axes.set_xscale("log", base=2)
  axes.set_xticks(sorted({r.nfe for r in rows}), [str(n) for n in sorted({r.nfe for r in rows})])
  axes.set_xlabel("model calls (NFE)")
  axes.set_ylabel("exact accuracy (%), pooled Wilson 95%")
  axes.legend(fontsize=7, ncol=2)
  axes.grid(alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def _main(argv: list[str]) -> int:
  parser = ScriptParser(description=__doc__, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", required=True, choices=sorted(task_models.SHIPPED))
  parser.add_argument("--data", required=True, help="a JSON-lines file of test examples")
  parser.add_argument("--models", nargs="+", required=True, help="task model folders")
  parser.add_argument("--nfe", nargs="+", type=float, default=[0.25, 0.5, 1.0, 2.0],
                      help="NFE as fractions of the answer length")
  parser.add_argument("--methods", nargs="+", default=list(ranking.METHODS),
                      choices=list(ranking.METHODS))
  parser.add_argument("--out", required=True)
  parser.add_argument("--limit", type=int, default=0, help="first N examples (0: all)")
  parser.add_argument("--seed", type=int, default=0, help="decoding seed")
  parser.add_argument("--batch-size", type=int, default=128)
  args = parser.parse_args(argv)
  check_lows(args, {"--limit": 0, "--seed": 0, "--batch-size": 1})
  if min(args.nfe) <= 0:
    raise UsageError(f"--nfe must be fractions > 0, got {args.nfe}")
  if ranking.BASELINE not in args.methods:
    args.methods.insert(0, ranking.BASELINE)
  task = make_task(args.task)
  examples = read_examples(args.data)[:args.limit or None]
  models = [pathlib.Path(m) for m in args.models]
  length = task_models.read_format(models[0]).answer_length
  budgets = sorted({max(1, round(f * length)) for f in args.nfe})
  scores = {(method, nfe): [_scores(args, model, method, nfe, examples, task)
                            for model in models]
            for nfe in budgets for method in args.methods}
  rows = ranking.table({key: np.stack([c for c, _ in runs]) for key, runs in scores.items()})
  agreements = ranking.agreements({key: [p for _, run in zip(models, runs) for p in run[1]]
                                   for key, runs in scores.items()})
  out = pathlib.Path(args.out)
  header = (f"{args.task}: {len(examples)} examples of {pathlib.Path(args.data).name}, "
            f"{len(models)} models "
            f"(training seeds), answer length {length}, decoding seed {args.seed}\n\n")
  text = header + ranking.markdown(rows) + ranking.agreement_markdown(agreements)
  files.write_atomic(out / "table.md", text)
  _plot(rows, out / "accuracy_vs_nfe.png")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(_main, sys.argv[1:]))

"""Score a task model on a JSON-lines file of Countdown or Sudoku examples.

  python sample/reasoning_eval.py --task=sudoku --data=FILE.jsonl --out=DIR
  python sample/reasoning_eval.py --task=countdown --data=FILE.jsonl --out=DIR \\
      --sampler.remasking=random --sampler.num_steps=8

Each line of FILE is `{"input": ..., "output": ...}` in the task's standard format (the output
is not read: answers are verified exactly, `remdm_jax.tasks`). The model is the task's shipped
one (`--model` for another task model folder); the decoder is LLaDA's low-confidence remasking
over one block, one token per step, argmax, unless `--sampler.*` flags (block decoding's,
`remdm-sample --help=sampler`) say otherwise. Writes DIR/predictions.jsonl (one
`{"input", "prediction"}` per example) and DIR/summary.json, and prints as its last line
`accuracy A (k/n, 95% Wilson interval [lo, hi]) ...`.
"""

import argparse
import json
import pathlib
import sys

from remdm_jax import files
from remdm_jax.cli import ScriptParser, UsageError, check_lows, parse_sections
from remdm_jax.errors import run_cli
from remdm_jax.eval.intervals import wilson
from remdm_jax.jobs import task_models
from remdm_jax.tasks import make_task, read_examples


def _main(argv: list[str]) -> int:
  parser = ScriptParser(description=__doc__, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", required=True, choices=sorted(task_models.SHIPPED))
  parser.add_argument("--data", required=True, help="a JSON-lines file of examples")
  parser.add_argument("--out", required=True, help="folder for predictions and summary")
  parser.add_argument("--model", default="", help="a task model folder (default: shipped)")
  parser.add_argument("--seed", type=int, default=0, help="decoding seed")
  parser.add_argument("--batch-size", type=int, default=64, help="examples per sampler call")
  parser.add_argument("--limit", type=int, default=0, help="score the first N (0: all)")
  args, rest = parser.parse_known_args(argv)
  check_lows(args, {"--seed": 0, "--batch-size": 1, "--limit": 0})
  model = pathlib.Path(args.model) if args.model else task_models.shipped_model(args.task)
  task_model = task_models.load_task_model(model)
  configs, unknown = parse_sections(rest,
                                    {"sampler": task_models.default_decoder(task_model.rows)})
  if unknown:
    raise UsageError(f"unexpected arguments {unknown}; see --help")
  examples = read_examples(args.data)[:args.limit or None]
  task = make_task(args.task)
  scored = task_models.score(task, task_model, examples, configs["sampler"], seed=args.seed,
                             batch_size=args.batch_size)
  out = files.check_writable_folder(args.out, "--out")
  files.write_atomic(out / "predictions.jsonl", "".join(
      json.dumps({"input": e["input"], "prediction": p}) + "\n"
      for e, p in zip(examples, scored.predictions)))
  k, n = int(scored.correct.sum()), len(examples)
  low, high = wilson(k, n)
  summary = {"task": args.task, "data": str(args.data), "model": str(model),
             "sampler": configs["sampler"].options(), "seed": args.seed, "correct": k,
             "examples": n, "accuracy": k / n, "interval95": [low, high],
             "unfit_inputs": scored.unfit}
  files.write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
  unfit = f", {scored.unfit} inputs did not fit the model" if scored.unfit else ""
  print(f"accuracy {k / n:.4f} ({k}/{n}, 95% Wilson interval [{low:.4f}, {high:.4f}]) "
        f"{args.task} {model.name}{unfit}")
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(_main, sys.argv[1:]))

"""Write a split of a reasoning task as a JSON-lines file (`{"input", "output"}` per line).

  python sample/make_task_data.py --task=sudoku --split=test --n=500 --out=sudoku4_test.jsonl
  python sample/make_task_data.py --task=sudoku --set size=6 min_clues=10 max_clues=18 \\
      --split=test --n=500 --out=sudoku6_test.jsonl
  python sample/make_task_data.py --task=countdown --set num_numbers=4 --split=test --n=1000 \\
      --out=cd4_test.jsonl

`--set NAME=VALUE ...` sets the task's options (`remdm_jax.tasks`: countdown num_numbers, low,
high, min_target, max_target; sudoku size, min_clues, max_clues). Splits are decided by the
examples' solutions (`remdm_jax.tasks.split_of`), so a test file never shares one with the
training data of any seed; `--seed` changes which examples are drawn.
"""

import argparse
import sys

from remdm_jax.cli import ScriptParser, UsageError, check_lows
from remdm_jax.errors import run_cli
from remdm_jax.tasks import REGISTRY, SPLITS, make_task, write_examples


def _options(pairs: list[str]) -> dict[str, int]:
  options = {}
  for pair in pairs:
    name, sep, value = pair.partition("=")
    if not sep or not value.lstrip("-").isdigit():
      raise UsageError(f"--set takes NAME=INTEGER, got {pair!r}")
    options[name] = int(value)
  return options


def _main(argv: list[str]) -> int:
  parser = ScriptParser(description=__doc__, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", required=True, choices=sorted(REGISTRY.classes))
  parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE")
  parser.add_argument("--split", default="test", choices=SPLITS)
  parser.add_argument("--n", type=int, required=True, help="examples")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", required=True, help="the JSON-lines file to write")
  args = parser.parse_args(argv)
  check_lows(args, {"--n": 1, "--seed": 0})
  task = make_task(args.task, **_options(args.set))
  write_examples(args.out, task.generate(args.seed, args.n, args.split))
  print(f"wrote {args.n} {args.split} examples of {task} to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(_main, sys.argv[1:]))

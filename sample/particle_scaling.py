"""Particles against more steps on a task model, at equal numbers of model calls (NFE).

  python sample/particle_scaling.py --task=countdown --data=cd3_test.jsonl --limit=500 \\
      --particles 2 4 8 --out results/countdown3_particles

The base decoder is the task model's low-confidence block decoder at temperature 0.7 with one
token per step (NFE = L, the answer length); at the same NFE, temporal self-consistency
voting (`TemporalVote()` over the answers of each step's clean-sequence estimate). Each
particle count P adds, at NFE = P L:
best-of-P by the model's confidence, self-rewarding SMC (resampling every `--every` steps
when the effective size is below P / 2), a majority vote over the P particles' answers,
particle Gibbs with 2 particles and P / 2 iterations (P >= 4), and, for comparison at the
same NFE, ReMDM-LLaDA remasking with P L steps (one particle). The
oracle pass@P (some particle is right, by the exact verifier) is reported apart as an upper
bound, never as a method. Scores are kept in OUT/scores/ (a rerun skips what is done);
OUT/table.md has accuracy, the Wilson 95% interval and McNemar's test against best-of-P's
base (one particle), and OUT/accuracy_vs_nfe.png the picture.
"""

import argparse
import json
import pathlib
import sys

import numpy as np

from remdm_jax import files
from remdm_jax.cli import ScriptParser, check_lows
from remdm_jax.errors import run_cli
from remdm_jax.eval.intervals import mcnemar, wilson
from remdm_jax.eval.voting import TemporalVote, majority
from remdm_jax.jobs import ranking, task_models
from remdm_jax.particles import BestOfN, ParticleGibbs, Smc
from remdm_jax.tasks import make_task, read_examples

BASE = "low_confidence_t0.7"
MORE_STEPS = "remdm_llada_1_t0.7"


def _scores(args, name: str, compute) -> dict:
  """`{"correct": {method: [N] bool}, "nfe": int}` of one run, read back when kept."""
  path = pathlib.Path(args.out) / "scores" / f"{name}.json"
  if not path.is_file():
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, json.dumps(compute()) + "\n")
  return json.loads(path.read_text())


def _runs(args, task, model, examples) -> list[tuple[str, int, np.ndarray]]:
  """Every (method, NFE, correct [N]) row."""
  inputs = [e["input"] for e in examples]
  verify = lambda answers: [task.verify(e["input"], a) for e, a in zip(examples, answers)]
  length = model.rows.answer_length

  def plain(method, nfe):
    config = ranking.METHODS[method](nfe, length)
    answers = task_models.solve(model.denoiser, config, model.rows, model.tokenizer, inputs,
                                seed=args.seed, batch_size=args.batch_size)
    return {"correct": {method: verify(answers)}, "nfe": nfe}

  def particles(method):
    config = ranking.METHODS[BASE](length, length)
    chosen, every, nfe = task_models.solve_with_particles(
        model.denoiser, config, method, model.rows, model.tokenizer, inputs, seed=args.seed,
        batch_size=max(1, args.batch_size // method.num))
    name = {"BestOfN": "best_of_p", "Smc": "smc", "ParticleGibbs": "gibbs"}[type(method).__name__]
    correct = {name: verify(chosen)}
    if isinstance(method, BestOfN):
      correct["majority_vote"] = verify([majority(a) for a in every])
      verdicts = [[task.verify(e["input"], a) for a in answers]
                  for e, answers in zip(examples, every)]
      correct["oracle_pass_at_p"] = [any(v) for v in verdicts]
    return {"correct": correct, "nfe": nfe}

  def votes():
    config = ranking.METHODS[BASE](length, length)
    _, voted = task_models.solve_with_votes(
        model.denoiser, config, model.rows, model.tokenizer, inputs, TemporalVote(),
        seed=args.seed, batch_size=args.batch_size)
    return {"correct": {"temporal_vote": verify(voted)}, "nfe": length}

  runs = [_scores(args, f"{BASE}_{length}", lambda: plain(BASE, length)),
          _scores(args, f"temporal_vote_{length}", votes)]
  for num in args.particles:
    runs.append(_scores(args, f"{MORE_STEPS}_{num * length}",
                        lambda: plain(MORE_STEPS, num * length)))
    runs.append(_scores(args, f"best_of_{num}", lambda: particles(BestOfN(num))))
    runs.append(_scores(args, f"smc_{num}_every{args.every}",
                        lambda: particles(Smc(num, every=args.every))))
    if num >= 4:
      runs.append(_scores(args, f"gibbs_2x{num // 2}_every{args.every}", lambda: particles(
          ParticleGibbs(2, every=args.every, iterations=num // 2))))
  return [(method, run["nfe"], np.array(c, bool)) for run in runs
          for method, c in run["correct"].items()]


def _table(rows, baseline: np.ndarray) -> str:
  lines = ["| method | NFE | accuracy % | Wilson 95% | McNemar vs base (b / c, p) |",
           "|---|---:|---:|---|---|"]
  for method, nfe, correct in rows:
    low, high = wilson(int(correct.sum()), len(correct))
    b, c, p = mcnemar(correct, baseline)
    apart = " (upper bound, not a method)" if method == "oracle_pass_at_p" else ""
    lines.append(f"| {method}{apart} | {nfe} | {100 * correct.mean():.1f} | "
                 f"[{100 * low:.1f}, {100 * high:.1f}] | {b} / {c}, {p:.3g} |")
  return "\n".join(lines) + "\n"


def _plot(rows, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figure, axes = plt.subplots(figsize=(7, 4.5))
  for method in dict.fromkeys(m for m, _, _ in rows):
    mine = sorted((nfe, 100 * c.mean()) for m, nfe, c in rows if m == method)
    style = "--" if method == "oracle_pass_at_p" else "-"
    axes.plot(*zip(*mine), style, marker="o", label=method)
  axes.set_xscale("log", base=2)
  axes.set_xlabel("model calls per example (NFE)")
  axes.set_ylabel("exact accuracy (%)")
  axes.legend(fontsize=8)
  axes.grid(alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def _main(argv: list[str]) -> int:
  parser = ScriptParser(description=__doc__, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", required=True, choices=sorted(task_models.SHIPPED))
  parser.add_argument("--data", required=True, help="a JSON-lines file of test examples")
  parser.add_argument("--model", default="", help="a task model folder (default: shipped)")
  parser.add_argument("--particles", nargs="+", type=int, default=[2, 4, 8])
  parser.add_argument("--every", type=int, default=4, help="SMC: resample every k steps")
  parser.add_argument("--out", required=True)
  parser.add_argument("--limit", type=int, default=0, help="first N examples (0: all)")
  parser.add_argument("--seed", type=int, default=0, help="decoding seed")
  parser.add_argument("--batch-size", type=int, default=256, help="rows (particles) per call")
  args = parser.parse_args(argv)
  check_lows(args, {"--limit": 0, "--seed": 0, "--batch-size": 1, "--every": 1,
                    "--particles": 2})
  task = make_task(args.task)
  examples = read_examples(args.data)[:args.limit or None]
  model = task_models.load_task_model(args.model or task_models.shipped_model(args.task))
  rows = _runs(args, task, model, examples)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  text = (f"{args.task}: {len(examples)} examples of {pathlib.Path(args.data).name}, one "
          f"model, decoding seed {args.seed}; base: {BASE} at NFE = L = "
          f"{model.rows.answer_length}\n\n" + _table(rows, rows[0][2]))
  files.write_atomic(out / "table.md", text)
  _plot(rows, out / "accuracy_vs_nfe.png")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(_main, sys.argv[1:]))

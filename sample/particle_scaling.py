"""Particles against more steps on a task model, at equal numbers of model calls (NFE).

  python sample/particle_scaling.py --task=countdown --data=cd3_test.jsonl --limit=500 \\
      --particles 2 4 8 --seeds 0 1 2 --out results/countdown3/particles

The base decoder is the task model's low-confidence block decoder at temperature 0.7 with one
token per step (NFE = L, the answer length); at the same NFE, temporal self-consistency
voting (`TemporalVote()` over the answers of each step's clean-sequence estimate). Each
particle count P adds, at NFE = P L: best-of-P by the model's confidence, self-rewarding SMC
(resampling every `--every` steps when the effective size is below P / 2), a majority vote
over the P particles' answers, particle Gibbs with 2 particles and P / 2 iterations (P >= 4;
resampling at every allowed step, its default), for P = 4 SMC resampling whenever the
weights differ (`ess_threshold=1`), and, at the same NFE, ReMDM-LLaDA remasking with P L
steps (one particle: more steps instead of more samples). The oracle pass@P (some particle
is right, by the exact verifier) is reported apart as an upper bound, never as a method.
Every run is repeated over the decoding seeds `--seeds`.

Scores are kept in OUT/scores/ (a rerun skips what is done). OUT/table.md has each method's
accuracy, its 95% Student-t interval over the seeds, the Wilson interval of all (seed, item)
pairs pooled, and McNemar's exact test on those pairs against ReMDM-LLaDA at the same NFE and
against the base decoder (NFE = L); OUT/accuracy_vs_nfe.png the picture.
"""

import argparse
import json
import pathlib
import sys

import numpy as np

from remdm_jax import files
from remdm_jax.cli import ScriptParser, check_lows
from remdm_jax.errors import run_cli
from remdm_jax.eval.intervals import mcnemar, pass_at_1, wilson
from remdm_jax.eval.voting import TemporalVote, majority
from remdm_jax.jobs import ranking, task_models
from remdm_jax.particles import BestOfN, ParticleGibbs, Smc
from remdm_jax.tasks import make_task, read_examples

BASE = "low_confidence_t0.7"
MORE_STEPS = "remdm_llada_1_t0.7"
ORACLE = "oracle_pass_at_p"
NAMES = {"BestOfN": "best_of_p", "Smc": "smc", "ParticleGibbs": "gibbs"}


def _kept(out: pathlib.Path, name: str, compute) -> dict:
  """`{"correct": {method: [N] bool}, "nfe": int}` of one run, read back when kept."""
  path = out / "scores" / f"{name}.json"
  if not path.is_file():
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, json.dumps(compute()) + "\n")
  return json.loads(path.read_text())


def _seed_runs(args, task, model, examples, seed: int) -> list[dict]:
  """Every run of one decoding seed."""
  inputs = [e["input"] for e in examples]
  verify = lambda answers: [task.verify(e["input"], a) for e, a in zip(examples, answers)]
  length, out = model.rows.answer_length, pathlib.Path(args.out)
  config = ranking.METHODS[BASE](length, length)

  def plain(method, nfe):
    answers = task_models.solve(model.denoiser, ranking.METHODS[method](nfe, length),
                                model.rows, model.tokenizer, inputs, seed=seed,
                                batch_size=args.batch_size)
    return {"correct": {method: verify(answers)}, "nfe": nfe}

  def votes():
    _, voted = task_models.solve_with_votes(model.denoiser, config, model.rows,
                                            model.tokenizer, inputs, TemporalVote(), seed=seed,
                                            batch_size=args.batch_size)
    return {"correct": {"temporal_vote": verify(voted)}, "nfe": length}

  def particles(method, name=None):
    found = task_models.solve_with_particles(
        model.denoiser, config, method, model.rows, model.tokenizer, inputs, seed=seed,
        batch_size=max(1, args.batch_size // method.num))
    correct = {name or NAMES[type(method).__name__]: verify(found.chosen)}
    if isinstance(method, BestOfN):
      correct["majority_vote"] = verify([majority(a) for a in found.every])
      correct[ORACLE] = [any(task.verify(e["input"], a) for a in answers)
                         for e, answers in zip(examples, found.every)]
    return {"correct": correct, "nfe": found.nfe,
            "resampled": float(np.mean(np.asarray(found.resamplings) > 0))}

  runs = [(f"{BASE}_{length}", lambda: plain(BASE, length)),
          (f"{MORE_STEPS}_{length}", lambda: plain(MORE_STEPS, length)),
          (f"temporal_vote_{length}", votes)]
  for num in args.particles:
    runs += [(f"{MORE_STEPS}_{num * length}", lambda n=num: plain(MORE_STEPS, n * length)),
             (f"best_of_{num}", lambda n=num: particles(BestOfN(n))),
             (f"smc_{num}_every{args.every}", lambda n=num: particles(Smc(n, every=args.every)))]
    if num >= 4:
      runs.append((f"gibbs_2x{num // 2}_every{args.every}_ess1", lambda n=num: particles(
          ParticleGibbs(2, every=args.every, iterations=n // 2))))
    if num == 4:
      runs.append((f"smc_{num}_every{args.every}_always", lambda n=num: particles(
          Smc(n, every=args.every, ess_threshold=1.0), name="smc_always")))
  return [_kept(out, f"{name}_s{seed}", compute) for name, compute in runs]


def _collect(per_seed: list[list[dict]]) -> tuple[dict, dict]:
  """`{(method, nfe): [S, N] bool}` over the seeds, and `{(method, nfe): share of examples
  that resampled}` (mean over seeds) of the SMC runs."""
  correct, resampled = {}, {}
  for runs in per_seed:
    for run in runs:
      for method, c in run["correct"].items():
        correct.setdefault((method, run["nfe"]), []).append(c)
        if "resampled" in run and method != ORACLE:
          resampled.setdefault((method, run["nfe"]), []).append(run["resampled"])
  return ({key: np.array(c, bool) for key, c in correct.items()},
          {key: float(np.mean(v)) for key, v in resampled.items()})


def _paired(scores: np.ndarray, other: np.ndarray | None) -> str:
  if other is None:
    return "n/a"
  wins, losses, p = mcnemar(scores.ravel(), other.ravel())
  return f"+{wins} / -{losses}, " + (f"**{p:.3g}**" if p < 0.05 else f"{p:.3g}")


def _table(correct, resampled, length: int) -> str:
  lines = ["| method | NFE | accuracy % | 95% over seeds | Wilson 95% (pooled) | "
           f"vs {MORE_STEPS} at the NFE: +/-, McNemar p | vs {BASE} at L: +/-, p | "
           "examples resampled % |", "|---|---:|---:|---|---|---|---|---:|"]
  for (method, nfe), scores in sorted(correct.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    summary = pass_at_1(scores)
    low, high = wilson(int(scores.sum()), scores.size)
    spread = "n/a" if np.isnan(summary.half_width) else f"+- {100 * summary.half_width:.1f}"
    name = f"{method} (upper bound, not a method)" if method == ORACLE else method
    more = None if method == MORE_STEPS else correct.get((MORE_STEPS, nfe))
    base = None if (method, nfe) == (BASE, length) else correct[(BASE, length)]
    lines.append(f"| {name} | {nfe} | {100 * summary.mean:.1f} | {spread} | "
                 f"[{100 * low:.1f}, {100 * high:.1f}] | {_paired(scores, more)} | "
                 f"{_paired(scores, base)} | "
                 + (f"{100 * resampled[(method, nfe)]:.1f} |" if (method, nfe) in resampled
                    else " |"))
  return "\n".join(lines) + "\n"


def _plot(correct, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figure, axes = plt.subplots(figsize=(7, 4.5))
  for method in sorted({m for m, _ in correct}):
    points = sorted((nfe, 100 * s.mean()) for (m, nfe), s in correct.items() if m == method)
    axes.plot(*zip(*points), "--" if method == ORACLE else "-", marker="o",
              label=f"{method} (upper bound)" if method == ORACLE else method)
  axes.set_xscale("log", base=2)
  axes.set_xlabel("model calls per example (NFE)")
  axes.set_ylabel("exact accuracy (%), mean over seeds")
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
  parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="decoding seeds")
  parser.add_argument("--every", type=int, default=4, help="SMC: resample every k steps")
  parser.add_argument("--out", required=True)
  parser.add_argument("--limit", type=int, default=0, help="first N examples (0: all)")
  parser.add_argument("--batch-size", type=int, default=256, help="rows (particles) per call")
  args = parser.parse_args(argv)
  check_lows(args, {"--limit": 0, "--seeds": 0, "--batch-size": 1, "--every": 1,
                    "--particles": 2})
  task = make_task(args.task)
  examples = read_examples(args.data)[:args.limit or None]
  model = task_models.load_task_model(args.model or task_models.shipped_model(args.task))
  correct, resampled = _collect([_seed_runs(args, task, model, examples, seed)
                                 for seed in args.seeds])
  out, length = pathlib.Path(args.out), model.rows.answer_length
  out.mkdir(parents=True, exist_ok=True)
  text = (f"{args.task}: {len(examples)} examples of {pathlib.Path(args.data).name}, one "
          f"model, decoding seeds {args.seeds}; base: {BASE} at NFE = L = {length}\n\n"
          + _table(correct, resampled, length))
  files.write_atomic(out / "table.md", text)
  _plot(correct, out / "accuracy_vs_nfe.png")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(_main, sys.argv[1:]))

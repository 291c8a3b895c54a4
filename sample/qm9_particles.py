"""Reward SMC against D-CBG on QM9 at equal numbers of model calls (NFE).

The QM9 models of `sample/qm9_guidance.py` (run it first, with the same `--work`): the
class-conditional MDLM at its null class is the base, its noisy classifier the reward. Both
guided methods aim at the same target, `p(x) p(y = 1 | x)^gamma`:

- D-CBG with strength gamma: T steps, each one model call and one classifier call with its
  gradient (the first-order form, as `qm9_guidance.py` samples it);
- reward SMC (`Smc(P, reward, beta = 1 / gamma)`, systematic resampling whenever the
  effective size falls below `--ess-threshold` x P, by default whenever the weights differ:
  two particles at the references' 0.5 would never resample): P particles of T / P steps,
  the reward `r(x) = log p(y = 1 | x, t = 0)` of each step's clean-sequence estimate, so
  every step is P model calls and P classifier calls (no gradient). Two molecules come out
  of each run: one particle drawn by the final weights (the SMC estimate of the target, like
  for like with D-CBG) and the particle of highest reward (a selection on top of it, one
  classifier call more per particle);
- best-of-P by the same reward, P decodes of T / P steps;
- the unguided model at T steps.

Every method spends `--nfe` model calls per molecule; the cells say their classifier calls
and the wall-clock seconds of the compiled call too. The sampler is MDLM's ancestral one.
Every cell has `--samples` molecules, scored as in `qm9_guidance.py` (validity, uniqueness,
novelty, the novel-valid-unique count and its mean property, with its standard error),
repeated over `--seeds`.

  python sample/qm9_particles.py --work runs/qm9 --out results/qm9_particles \\
      [--prop qed] [--nfe 32] [--particles 2 4] [--gammas 4 16] [--seeds 0 1]
      [--ess-threshold 1]

Cells are kept in OUT/cells.json (a rerun skips what is done); OUT/table.md has the table.
Needs the `chem` extra (RDKit).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax import files, make_sampler, sampler_config
from remdm_jax.cli import ScriptParser, UsageError, check_lows
from remdm_jax.errors import run_cli
from remdm_jax.eval import chem
from remdm_jax.guidance import guidance_class
from remdm_jax.models import as_classifier, as_denoiser
from remdm_jax.particles import BestOfN, Smc
from remdm_jax.weights.checkpoint import exported_step, load_model

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import qm9_guidance as guidance   # noqa: E402  (the models, decoding and novelty set)

TARGET = 1   # the class at or above the training set's 90th percentile


def reward_of(classifier):
  """`tokens [N, L] int32 -> [N] float32`: `log p(y = TARGET | x, t = 0)` of the classifier
  (jittable; the classifier's parameters become constants of the sampler)."""
  cls = as_classifier(classifier)

  def reward(tokens):
    x = jax.nn.one_hot(tokens, guidance.TOK.vocab_size)
    logits = cls(x, jnp.zeros((tokens.shape[0],), jnp.float32))
    return jax.nn.log_softmax(logits, axis=-1)[:, TARGET]

  return reward


def property_sem(smiles: list[str], training: chem.CanonicalSet, prop: str) -> float:
  """Standard error of the mean property over the novel valid unique molecules."""
  valid = {c for c in map(chem.canonical, smiles) if c is not None}
  values = chem.property_values(sorted(valid - training), prop)
  return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def runs(args) -> dict:
  """`name -> (kind, steps, particles, gamma)` of every run of one seed."""
  found = {f"unguided T={args.nfe}": ("plain", args.nfe, 1, 0.0)}
  for gamma in args.gammas:
    found[f"D-CBG gamma={gamma:g} T={args.nfe}"] = ("cbg", args.nfe, 1, gamma)
    for num in args.particles:
      steps = args.nfe // num
      found[f"reward SMC beta=1/{gamma:g} P={num} T={steps}"] = ("smc", steps, num, gamma)
  for num in args.particles:
    found[f"best-of-{num} by reward T={args.nfe // num}"] = ("best", args.nfe // num, num, 0.0)
  return found


def cell_names(name: str, kind: str) -> list[str]:
  """The cells (table rows) a run fills: two for reward SMC, one otherwise."""
  return [f"{name}, drawn by weight", f"{name}, best by reward"] if kind == "smc" else [name]


def prepare_run(kind: str, steps: int, num: int, gamma: float, model, classifier, args):
  """`call(key) -> (ids per cell [samples, L] each, classifier calls per molecule per cell,
  model calls per molecule)` of one run (in `cell_names` order), compiled beforehand. The
  unguided and D-CBG runs are `BestOfN(1)` (exactly the plain decode) so that they count
  their model calls too."""
  reward, denoiser, params = reward_of(classifier), as_denoiser(model), None
  if kind == "cbg":
    denoiser = guidance_class("cbg")(gamma=gamma).denoiser(
        lambda label: as_denoiser(model, label=label), target=TARGET,
        classifier=as_classifier(classifier), mask_id=guidance.TOK.mask_id)
    params = denoiser.params
  method = BestOfN(1)
  if kind == "best":
    method = BestOfN(num, reward=reward)
  elif kind == "smc":
    method = Smc(num, reward=reward, beta=1.0 / gamma, resampler="systematic",
                 ess_threshold=args.ess_threshold, choose="weight")
  sampler = make_sampler(denoiser, sampler_config(num_steps=steps, strategy="mdlm"),
                         batch_size=args.samples, seq_len=guidance.LENGTH,
                         mask_id=guidance.TOK.mask_id, particles=method,
                         return_particles=True)
  sampler.compile(jax.random.key(0), params)
  if kind != "smc":
    def classifier_calls(nfe):
      return {"plain": 0, "cbg": nfe, "best": num}[kind]
    return lambda key: (lambda r: ([np.asarray(r.tokens)], [classifier_calls(int(r.nfe))],
                                   int(r.nfe)))(sampler(key, params))
  rewards = jax.jit(reward)
  rewards(jnp.zeros((args.samples * num, guidance.LENGTH), jnp.int32))   # compiled here

  def call(key):
    result = sampler(key)
    particles = np.asarray(result.particles)                              # [B, P, L]
    scores = np.asarray(rewards(particles.reshape(-1, particles.shape[-1])))
    best = particles[np.arange(len(particles)), scores.reshape(-1, num).argmax(-1)]
    return ([np.asarray(result.tokens), best], [num * (steps + 1), num * (steps + 2)],
            int(result.nfe))

  return call


def summary(cells: dict, prop: str, name: str, seeds) -> dict | None:
  """One table row's numbers over the seeds that ran: the count and the property (mean and
  half the range), the property's pooled standard error, validity, seconds."""
  done = [cells[f"{prop}|{name}|{seed}"] for seed in seeds if f"{prop}|{name}|{seed}" in cells]
  if not done:
    return None
  nvu = np.array([c["novel_valid_unique"] for c in done], float)
  value = np.array([c["mean_property"] for c in done], float)
  squares = [c["property_sem"] ** 2 for c in done if np.isfinite(c["property_sem"])]
  return {"nvu": nvu.mean(), "nvu_spread": np.ptp(nvu) / 2, "value": value.mean(),
          "spread": np.ptp(value) / 2,
          "sem": np.sqrt(np.mean(squares) / len(squares)) if squares else float("nan"),
          "valid": np.mean([c["valid"] for c in done]),
          "seconds": np.mean([c["seconds"] for c in done]),
          "model_calls": done[0]["model_calls"], "classifier_calls": done[0]["classifier_calls"]}


def difference(row: dict, reference: dict | None) -> str:
  """`row`'s property minus `reference`'s, and the two-sided p of a normal test on their
  standard errors (independent molecules)."""
  if reference is None:
    return "n/a"
  gap = row["value"] - reference["value"]
  z = gap / np.hypot(row["sem"], reference["sem"])
  p = math.erfc(abs(z) / math.sqrt(2.0))
  return f"{gap:+.3f}, p = " + (f"**{p:.2g}**" if p < 0.05 else f"{p:.2g}")


def write_table(cells: dict, out: pathlib.Path, args) -> None:
  """OUT/table.md: per method, `summary`, and its property against D-CBG at the same gamma
  (SMC) or against the unguided model (the others)."""
  lines = [f"{args.prop}, {args.samples} molecules per cell, MDLM ancestral sampling, "
           f"{args.nfe} model calls per molecule; seeds {' '.join(map(str, args.seeds))}. "
           "NVU: novel-valid-unique count; property: its mean over the NVU molecules "
           "(+- half the range over seeds; s.e.: the root mean square of the cells' standard "
           "errors over the square root of the seeds); vs: the difference of the property "
           "from D-CBG at the same gamma (reward SMC) or from the unguided model (the "
           "others), p of a two-sided normal test on the standard errors; seconds: one "
           "compiled call.\n",
           "| method | model calls | classifier calls | NVU | mean property | s.e. | vs | "
           "valid | seconds |", "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
  found = runs(args)
  unguided = summary(cells, args.prop, next(iter(found)), args.seeds)
  for name, (kind, _, _, gamma) in found.items():
    reference = None if kind == "plain" else unguided
    if kind == "smc":
      reference = summary(cells, args.prop, f"D-CBG gamma={gamma:g} T={args.nfe}", args.seeds)
    for cell in cell_names(name, kind):
      row = summary(cells, args.prop, cell, args.seeds)
      if row is None:
        continue
      lines.append(f"| {cell} | {row['model_calls']} | {row['classifier_calls']} | "
                   f"{row['nvu']:.0f} +- {row['nvu_spread']:.0f} | {row['value']:.3f} +- "
                   f"{row['spread']:.3f} | {row['sem']:.3f} | {difference(row, reference)} | "
                   f"{row['valid']:.3f} | {row['seconds']:.1f} |")
  files.write_atomic(out / "table.md", "\n".join(lines) + "\n")


def main():
  parser = ScriptParser(description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--work", required=True, help="qm9_guidance.py's --work (trained models)")
  parser.add_argument("--out", required=True)
  parser.add_argument("--prop", default="qed", choices=chem.PROPERTIES)
  parser.add_argument("--samples", type=int, default=1024)
  parser.add_argument("--nfe", type=int, default=32, help="model calls per molecule")
  parser.add_argument("--particles", type=int, nargs="+", default=[2, 4])
  parser.add_argument("--gammas", type=float, nargs="+", default=[4.0, 16.0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--ess-threshold", type=float, default=1.0,
                      help="reward SMC resamples when the effective size < this x P")
  args = parser.parse_args()
  check_lows(args, {"--samples": 1, "--nfe": 1, "--particles": 1, "--seeds": 0})
  if not 0.0 <= args.ess_threshold <= 1.0:
    raise UsageError(f"--ess-threshold must be in [0, 1], got {args.ess_threshold}")
  if any(g <= 0 for g in args.gammas):
    raise UsageError(f"--gammas must be above 0, got {args.gammas}")
  if any(args.nfe % p for p in args.particles):
    raise UsageError(f"--nfe must be a multiple of every --particles count, got {args.nfe} "
                     f"and {args.particles}")
  work, out = pathlib.Path(args.work), pathlib.Path(args.out)
  names = {f"mdlm_{args.prop}", f"classifier_{args.prop}"}
  missing = [n for n in sorted(names) if not (work / n / "model").is_dir()]
  if missing:
    raise FileNotFoundError(f"--work has no trained {', '.join(missing)}: run "
                            f"sample/qm9_guidance.py --work {work} --props {args.prop} first")
  model = load_model(work / f"mdlm_{args.prop}" / "model")
  classifier = load_model(work / f"classifier_{args.prop}" / "model")
  models = {n: exported_step(work / n / "model") for n in sorted(names)}
  training = guidance.training_set(work)
  out.mkdir(parents=True, exist_ok=True)
  cells_path = out / "cells.json"
  cells = json.loads(cells_path.read_text()) if cells_path.is_file() else {}
  for seed in args.seeds:
    for name, (kind, steps, num, gamma) in runs(args).items():
      keys = [f"{args.prop}|{cell}|{seed}" for cell in cell_names(name, kind)]
      if all(cells.get(key, {}).get("models") == models and
             cells[key].get("samples") == args.samples for key in keys):
        continue
      call = prepare_run(kind, steps, num, gamma, model, classifier, args)
      tic = time.time()
      outputs, classifier_calls, nfe = call(jax.random.key(seed))
      seconds = time.time() - tic
      for key, ids, calls in zip(keys, outputs, classifier_calls):
        smiles = guidance.decode_smiles(ids)
        cells[key] = {**chem.generation_metrics(smiles, training, args.prop),
                      "property_sem": property_sem(smiles, training, args.prop),
                      "model_calls": nfe, "classifier_calls": calls, "models": models,
                      "seconds": seconds, "examples": smiles[:8]}
        print(f"{key}: {cells[key]['novel_valid_unique']} NVU, mean {args.prop} "
              f"{cells[key]['mean_property']:.3f} ({seconds:.0f} s)", flush=True)
      files.write_atomic(cells_path, json.dumps(cells, indent=1) + "\n")
  write_table(cells, out, args)
  print((out / "table.md").read_text())


if __name__ == "__main__":
  sys.exit(run_cli(lambda argv: main() or 0, sys.argv[1:]))

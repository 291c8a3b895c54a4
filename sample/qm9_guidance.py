"""Guided molecule generation on QM9 (ReMDM section 5.3, Figure 4): D-CFG and D-CBG with every
sampler, per property (QED, ring count), over a sweep of guidance strengths gamma.

Steps, each resumable (rerun the same command; finished parts are kept):
  1. labels: each training molecule's property (RDKit) and class 1 at or above the training
     set's 90th percentile (`remdm_jax.eval.chem`), cached in WORK;
  2. models, per property, with the library's training loop: a class-conditional MDLM (label
     dropout 0.1 to the null class: one network for x_theta(. | y) and x_theta(. | null)) and
     a classifier of noisy sequences p(y | z_t) (objective "classifier");
  3. cells: property x guidance x sampler x gamma x seed, `--samples` molecules each, scored
     with validity, uniqueness, novelty (against the training set), the novel-valid-unique
     count and its mean property; one JSON entry per cell in OUT/cells.json;
  4. OUT/table.md and one Pareto plot per property and guidance (x: novel-valid-unique count,
     y: mean property; one curve per sampler over gamma).

D-CFG mixes the conditional (y = 1) and null-class predictions of the one model; D-CBG
reweights the null-class prediction with the classifier in its first-order (gradient) form
(the exact form needs L x V = 8,288 classifier inputs per molecule and step at this size).
gamma = 0 is the unguided model for both.

  python sample/qm9_guidance.py --work runs/qm9 --out results/qm9_guidance [--samples 1024]
      [--steps 32] [--seeds 0 1] [--train-steps 4000] [--classifier-steps 1500]

Needs the `chem` and `eval` extras (RDKit, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax import build_table, classifier_guidance, make_sampler, sampler_config
from remdm_jax.eval import chem
from remdm_jax.data import datasets as data
from remdm_jax.training import loop as training
from remdm_jax.guidance import GUIDANCE_FORMS, guidance_class
from remdm_jax.schedules import LogLinear
from remdm_jax.weights.checkpoint import exported_step, load_model
from remdm_jax.cli import ScriptParser, check_lows
from remdm_jax.errors import run_cli
from remdm_jax.models import DiTConfig, as_classifier, as_denoiser
from remdm_jax.text.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
LENGTH = 32
SAMPLERS = {   # the paper's molecule settings: rescale eta 0.9 with conf; loop for D-CFG
    "MDLM": dict(strategy="mdlm"),
    "MDLM+FB": dict(strategy="fb"),
    "MDLM+DFM": dict(strategy="dfm"),
    "ReMDM-rescale eta=0.5": dict(strategy="rescale", eta=0.5),
    "ReMDM-conf rescale eta=0.9": dict(strategy="conf", base="rescale", eta=0.9),
    "ReMDM-loop t_on=0.25 t_off=0.125": dict(strategy="loop", t_on=0.25, t_off=0.125),
}
GAMMAS = {"cfg": [0.0, 2.0, 4.0], "cbg": [0.0, 4.0, 16.0]}
CALLS = {"cfg": "2 model calls", "cbg": "1 model call, 1 classifier call and its gradient"}


def data_config(work: pathlib.Path, prop: str = "") -> data.DataConfig:
  return data.DataConfig(dataset="qm9_smiles", data_dir=str(work / "tfds"),
                         source_dir=str(work / "source"), seq_len=LENGTH, layout="pad",
                         label=prop)


def labelled_rows(work: pathlib.Path, prop: str) -> tuple[dict, dict]:
  """Train and validation rows with class labels, cached in WORK/rows_PROP.npz."""
  cache = work / f"rows_{prop}.npz"
  if not cache.exists():
    labelled = data_config(work, prop).load_rows(TOK)
    np.savez(cache, **{f"{split}_{name}": rows[name]
                       for split, rows in zip(("train", "valid"), labelled)
                       for name in ("tokens", "labels")})
  stored = np.load(cache)
  return tuple({name: stored[f"{split}_{name}"] for name in ("tokens", "labels")}
               for split in ("train", "valid"))


def training_set(work: pathlib.Path) -> chem.CanonicalSet:
  """Canonical SMILES of the training molecules (for novelty), cached in WORK (written by
  `chem.canonical_set`, so read back as one)."""
  cache = work / "train_canonical.txt"
  if not cache.exists():
    cfg = data_config(work)
    smiles = data.load_texts("qm9_smiles", "train", cfg.data_dir, cfg.source_dir)
    cache.write_text("\n".join(sorted(chem.canonical_set(smiles))) + "\n")
  return chem.CanonicalSet(cache.read_text().split())


def train_model(work: pathlib.Path, name: str, objective: str, rows: dict, args) -> object:
  """A class-conditional MDLM (`objective` "mdlm") or a noisy classifier, trained (or resumed)
  in WORK/NAME with the library's training loop; returns the exported model."""
  model_cfg = DiTConfig(vocab_size=TOK.vocab_size, hidden=args.hidden, heads=4,
                        blocks=args.blocks, cond_dim=64, max_length=LENGTH, dropout=0.0,
                        num_classes=2, time_conditioning=objective == "classifier")
  steps = args.classifier_steps if objective == "classifier" else args.train_steps
  cfg = training.TrainConfig().with_options(
      objective=objective, batch_size=args.batch_size, steps=steps, warmup_steps=200,
      learning_rate=1e-3, ema_decay=0.999, eval_every=0, save_every=500, log_every=50)
  training.train(model_cfg, cfg, data.BatchStream(rows, cfg.batch_size, cfg.seed), None,
                 TOK.mask_id, work / name, tokenizer="bytes")
  return load_model(work / name / "model")


def decode_smiles(ids: np.ndarray) -> list[str]:
  """Sampled rows `[N, L]` to SMILES: after a leading BOS, up to the first EOS; a row with
  another special id before its EOS decodes to "" (invalid)."""
  out = []
  for row in ids:
    row = row[1:] if row[0] == TOK.bos_id else row
    end = np.flatnonzero(row == TOK.eos_id)
    row = row[:end[0]] if len(end) else row
    out.append(TOK.decode(row) if np.all(row < 256) else "")
  return out


def guided_sampler(model, classifier, guidance: str, sampler: str, steps: int, n: int):
  """`run(key, gamma) -> ids [n, L]`, compiled here, once per (guidance, sampler): gamma is a
  parameter of the guided denoiser, so every gamma reuses the executable."""
  cfg = sampler_config(num_steps=steps, **SAMPLERS[sampler])
  cls = as_classifier(classifier) if guidance_class(guidance).needs_classifier else None
  guided = lambda gamma: guidance_class(guidance)(gamma=gamma).denoiser(
      lambda label: as_denoiser(model, label=label), target=1, classifier=cls,
      mask_id=TOK.mask_id)
  run = make_sampler(guided(0.0), cfg, batch_size=n, seq_len=LENGTH,
                     mask_id=TOK.mask_id).compile(jax.random.key(0))
  return lambda key, gamma: np.asarray(run(key, guided(gamma).params))


def run_cells(args, prop: str, model, classifier, training_set: frozenset, cells: dict,
              save, models: dict) -> None:
  """Runs the missing cells of one property; a cell is redone when its sample count or the
  models it came from (`models`: their training steps) changed."""
  for guidance in args.guidances:
    gammas = GAMMAS[guidance]
    for sampler in SAMPLERS:
      run = None
      for gamma in gammas:
        for seed in args.seeds if gamma == max(gammas) else args.seeds[:1]:
          key = f"{prop}|{guidance}|{sampler}|{gamma:g}|{seed}"
          done = cells.get(key, {})
          if done.get("samples") == args.samples and done.get("models") == models:
            continue
          if run is None:
            run = guided_sampler(model, classifier, guidance, sampler, args.steps,
                                 args.samples)
          tic = time.time()
          smiles = decode_smiles(run(jax.random.key(seed), gamma))
          seconds = time.time() - tic
          steps = len(build_table(sampler_config(num_steps=args.steps,
                                                 **SAMPLERS[sampler])).t)
          cells[key] = {**chem.generation_metrics(smiles, training_set, prop),
                        "models": models, "seconds": seconds, "steps": steps,
                        "seconds_per_step": seconds / steps, "examples": smiles[:8]}
          print(f"{key}: {cells[key]['novel_valid_unique']} novel-valid-unique, mean "
                f"{prop} {cells[key]['mean_property']:.3f} ({seconds:.1f} s)", flush=True)
          save()


def noise_mask(rng: np.random.Generator, shape: tuple, t: float) -> np.ndarray:
  """`shape` bool: each position masked with probability 1 - alpha(t) (log-linear, eps 1e-3,
  as the models train)."""
  return rng.random(shape) < 1.0 - float(LogLinear(eps=1e-3).alpha(t))


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of `scores [N]` for binary `labels [N]` (Mann-Whitney U)."""
  ranks = np.empty(len(scores))
  ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
  positive = labels == 1
  return float((ranks[positive].sum() - positive.sum() * (positive.sum() + 1) / 2)
               / (positive.sum() * (~positive).sum()))


def check_classifier(classifier, rows: dict) -> list[dict]:
  """The classifier on held-out molecules `rows` ({"tokens", "labels"}), each position masked
  with probability 1 - alpha(t): AUC of log p(y = 1 | z_t) and cross-entropy, beside the
  cross-entropy of the class prior (what a classifier that ignores its input gets)."""
  rng = np.random.default_rng(0)
  cls, labels = as_classifier(classifier), rows["labels"]
  prior = labels.mean()
  prior_ce = float(-(prior * np.log(prior) + (1 - prior) * np.log(1 - prior)))
  results = []
  for t_value in (1e-3, 0.25, 0.5, 0.75):
    masked = noise_mask(rng, rows["tokens"].shape, t_value)
    z = np.where(masked, TOK.mask_id, rows["tokens"])
    log_p = np.asarray(jax.nn.log_softmax(cls(jax.nn.one_hot(z, TOK.vocab_size),
                                              jnp.full((len(z),), t_value)), axis=-1))
    results.append({"t": t_value, "auc": rank_auc(log_p[:, 1], labels),
                    "cross_entropy": float(-log_p[np.arange(len(z)), labels].mean()),
                    "prior_cross_entropy": prior_ce})
  return results


def compare_forms(model, classifier, rows: np.ndarray, gammas) -> list[dict]:
  """Exact against first-order D-CBG on noised held-out molecules `rows [N, L]`: for t in
  (0.25, 0.5, 0.75) (each position masked with probability 1 - alpha(t)) and each gamma, the
  mean over masked positions of the total variation between the exact- and gradient-guided
  `x_theta`, beside that between the unguided and the exact-guided one (the size of the
  guidance itself), and the seconds of one guided call of each form (compiled beforehand)."""
  rng = np.random.default_rng(0)
  uncond, cls = as_denoiser(model), as_classifier(classifier)
  results = []
  for t_value in (0.25, 0.5, 0.75):
    t = jnp.full((len(rows),), t_value, jnp.float32)
    masked = noise_mask(rng, rows.shape, t_value)
    z = jnp.asarray(np.where(masked, TOK.mask_id, rows), jnp.int32)
    plain = np.exp(np.asarray(jax.nn.log_softmax(uncond(z, t), axis=-1)))
    for gamma in gammas:
      probs, seconds = {}, {}
      for form in GUIDANCE_FORMS:
        guided = classifier_guidance(uncond, cls, target=1, gamma=gamma, mask_id=TOK.mask_id,
                                     form=form)
        compiled = jax.jit(lambda den, z, t: den(z, t)).lower(guided, z, t).compile()
        tic = time.time()
        probs[form] = np.exp(np.asarray(compiled(guided, z, t)))
        seconds[form] = time.time() - tic
      tv = lambda a, b: float(0.5 * np.abs(a - b).sum(-1)[masked].mean())
      results.append({"t": t_value, "gamma": gamma, "masked": int(masked.sum()),
                      "tv_exact_gradient": tv(probs["exact"], probs["gradient"]),
                      "tv_unguided_exact": tv(plain, probs["exact"]),
                      "tv_unguided_gradient": tv(plain, probs["gradient"]),
                      "seconds_exact": seconds["exact"], "seconds_gradient": seconds["gradient"]})
      print(f"exact vs gradient: {results[-1]}", flush=True)
  return results


def aggregate(cells: dict) -> dict:
  """`(prop, guidance, sampler, gamma) -> (mean, spread)` of the count and the property over
  seeds (the property over the seeds that have a novel valid molecule); spread is half the
  range (0 for one seed)."""
  groups = {}
  for key, cell in cells.items():
    prop, guidance, sampler, gamma, _ = key.split("|")
    groups.setdefault((prop, guidance, sampler, float(gamma)), []).append(cell)
  summary = {}
  for group, members in groups.items():
    count = np.array([m["novel_valid_unique"] for m in members], np.float64)
    value = np.array([m["mean_property"] for m in members], np.float64)
    value = value[np.isfinite(value)]     # a seed with no novel valid molecule has no mean
    summary[group] = {"nvu": count.mean(), "nvu_spread": np.ptp(count) / 2,
                      "property": value.mean() if len(value) else np.nan,
                      "property_spread": np.ptp(value) / 2 if len(value) else np.nan,
                      "valid": np.mean([m["valid"] for m in members]),
                      "seconds_per_step": np.mean([m["seconds_per_step"] for m in members]),
                      "seeds": len(members), "samples": members[0]["samples"]}
  return summary


def cell_text(c: dict) -> str:
  """`count / property / validity`, with +- half the range over seeds where there are two
  or more."""
  if c["seeds"] < 2:
    return f"{c['nvu']:.0f} / {c['property']:.3f} / {c['valid']:.2f}"
  return (f"{c['nvu']:.0f} +- {c['nvu_spread']:.0f} / {c['property']:.3f} +- "
          f"{c['property_spread']:.3f} / {c['valid']:.2f}")


def write_report(summary: dict, forms: dict, checks: dict, out: pathlib.Path, args) -> None:
  """OUT/table.md (cells, the classifiers on held-out molecules, the exact vs first-order
  comparison) and OUT/pareto_PROP_GUIDANCE.png."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  lines = [f"T = {args.steps}; novel-valid-unique count / mean property over them / "
           "validity. Where a cell ran with several seeds (each guidance's largest gamma), "
           "the mean +- half the range. s / step: wall-clock seconds per step on this "
           "machine, averaged over the row.\n"]
  for prop in sorted({g[0] for g in summary}):
    for guidance in GAMMAS:
      gammas = GAMMAS[guidance]
      samples = sorted({c["samples"] for g, c in summary.items() if g[:2] == (prop, guidance)})
      if not samples:
        continue
      lines += [f"\n### {prop}, {guidance.upper()}: {'/'.join(map(str, samples))} molecules "
                f"per cell (per step: {CALLS[guidance]})\n",
                "| sampler | " + " | ".join(f"gamma = {g:g}" for g in gammas) +
                " | s / step |", "|---" * (len(gammas) + 2) + "|"]
      fig, ax = plt.subplots(figsize=(6, 4.5))
      for sampler in SAMPLERS:
        row = [summary.get((prop, guidance, sampler, g)) for g in gammas]
        done = [(g, c) for g, c in zip(gammas, row) if c]
        if not done:
          continue
        lines.append(f"| {sampler} | " + " | ".join(
            cell_text(c) if c else "-" for c in row) +
            f" | {np.mean([c['seconds_per_step'] for _, c in done]):.4f} |")
        ax.errorbar([c["nvu"] for _, c in done], [c["property"] for _, c in done],
                    xerr=[c["nvu_spread"] for _, c in done],
                    yerr=[c["property_spread"] for _, c in done], marker="o", label=sampler)
      ax.set_xlabel("novel, valid, unique molecules")
      ax.set_ylabel(f"mean {prop}")
      ax.set_title(f"{prop}, {guidance.upper()} (gamma {', '.join(f'{g:g}' for g in gammas)})")
      ax.legend(fontsize=6)
      fig.tight_layout()
      fig.savefig(out / f"pareto_{prop}_{guidance}.png", dpi=120)
      plt.close(fig)
  for prop, checked in sorted(checks.items()):
    lines += [f"\n### {prop}: the noisy classifier on 2,000 held-out molecules\n",
              "| t | AUC | cross-entropy | class prior's cross-entropy |", "|---" * 4 + "|"]
    lines += [f"| {r['t']:g} | {r['auc']:.3f} | {r['cross_entropy']:.3f} | "
              f"{r['prior_cross_entropy']:.3f} |" for r in checked["rows"]]
  for prop, compared in sorted(forms.items()):
    rows = compared["rows"]
    lines += [f"\n### {prop}: exact vs first-order D-CBG on {args.exact_molecules} noised "
              "held-out molecules\n",
              "Mean total variation over masked positions between the exact- and the "
              "gradient-guided x_theta, beside the unguided vs exact and unguided vs gradient "
              "ones (how far each form moves x_theta); seconds of one guided call of each "
              "form.\n",
              "| t | gamma | masked | TV exact-gradient | TV unguided-exact | "
              "TV unguided-gradient | s exact | s gradient |", "|---" * 8 + "|"]
    for r in rows:
      gradient_moved = r.get("tv_unguided_gradient", float("nan"))
      lines.append(f"| {r['t']:g} | {r['gamma']:g} | {r['masked']} | "
                   f"{r['tv_exact_gradient']:.4f} | {r['tv_unguided_exact']:.4f} | "
                   f"{gradient_moved:.4f} | {r['seconds_exact']:.2f} | "
                   f"{r['seconds_gradient']:.3f} |")
  (out / "table.md").write_text("\n".join(lines) + "\n")


def main():
  parser = ScriptParser(description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--work", required=True, help="data, labels and trained models")
  parser.add_argument("--out", required=True)
  parser.add_argument("--props", nargs="+", default=list(chem.PROPERTIES),
                      choices=chem.PROPERTIES)
  parser.add_argument("--guidances", nargs="+", default=list(GAMMAS), choices=list(GAMMAS))
  parser.add_argument("--samples", type=int, default=1024)
  parser.add_argument("--steps", type=int, default=32)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--train-steps", type=int, default=4000,
                      help="class-conditional MDLM steps (a rerun with more extends it)")
  parser.add_argument("--classifier-steps", type=int, default=1500)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--blocks", type=int, default=4)
  parser.add_argument("--exact-molecules", type=int, default=8,
                      help="held-out molecules for the exact vs first-order D-CBG comparison "
                           "(0 skips it)")
  args = parser.parse_args()
  check_lows(args, {"--samples": 1, "--steps": 1, "--seeds": 0, "--train-steps": 1,
                    "--classifier-steps": 1, "--batch-size": 1, "--hidden": 1, "--blocks": 1,
                    "--exact-molecules": 0})
  work, out = pathlib.Path(args.work), pathlib.Path(args.out)
  work.mkdir(parents=True, exist_ok=True)
  out.mkdir(parents=True, exist_ok=True)
  cells_path = out / "cells.json"
  cells = json.loads(cells_path.read_text()) if cells_path.exists() else {}
  save = lambda: cells_path.write_text(json.dumps(cells, indent=1) + "\n")
  forms_path = out / "exact_vs_gradient.json"
  forms = json.loads(forms_path.read_text()) if forms_path.exists() else {}
  checks_path = out / "classifier_checks.json"
  checks = json.loads(checks_path.read_text()) if checks_path.exists() else {}
  for prop in args.props:
    train_rows, valid_rows = labelled_rows(work, prop)
    print(f"{prop}: {int(train_rows['labels'].sum())} of {len(train_rows['labels'])} "
          "training molecules in class 1", flush=True)
    model = train_model(work, f"mdlm_{prop}", "mdlm", train_rows, args)
    classifier = train_model(work, f"classifier_{prop}", "classifier", train_rows, args)
    models = {name: exported_step(work / name / "model")
              for name in (f"mdlm_{prop}", f"classifier_{prop}")}
    run_cells(args, prop, model, classifier, training_set(work), cells, save, models)
    if checks.get(prop, {}).get("models") != models:
      held_out = {name: valid_rows[name][:2000] for name in ("tokens", "labels")}
      checks[prop] = {"models": models, "rows": check_classifier(classifier, held_out)}
      checks_path.write_text(json.dumps(checks, indent=1) + "\n")
    if args.exact_molecules and forms.get(prop, {}).get("models") != models:
      forms[prop] = {"models": models, "rows": compare_forms(
          model, classifier, valid_rows["tokens"][:args.exact_molecules], GAMMAS["cbg"][1:])}
      forms_path.write_text(json.dumps(forms, indent=1) + "\n")
  write_report(aggregate(cells), forms, checks, out, args)
  print((out / "table.md").read_text())


if __name__ == "__main__":
  sys.exit(run_cli(lambda argv: main() or 0, sys.argv[1:]))

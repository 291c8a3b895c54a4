"""Inference-time scaling on the shipped model: MDLM, FB, DFM and ReMDM at growing T.

For each method and T in {L/8, ..., 4L} draws `--samples` sequences and reports MAUVE (against
held-out Shakespeare), Gen PPL (under the shipped causal evaluator, which was trained on
BOS-prefixed rows and so scores texts with a BOS prepended) and unigram entropy;
writes `scaling.md`, `scaling.json` and `scaling.png` into `--out`. Paper defaults (Wang et
al. 2025, Table 6) are used as given, with the T >= L / T < L split taken at the model's L.

  python sample/scaling.py --out results/scaling [--samples 256] [--steps 16 32 64 128 256 512]
"""

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np
from flax import nnx

from remdm_jax import SamplerConfig, build_table, sample, sampler_config
from remdm_jax.data import datasets as data
from remdm_jax import eval as metrics
from remdm_jax.weights.checkpoint import load_model
from remdm_jax.cli import ScriptParser, check_lows
from remdm_jax.errors import run_cli
from remdm_jax.jobs.sample_job import SHIPPED_MODEL
from remdm_jax.models import as_denoiser, as_evaluator
from remdm_jax.text.tokenizers import ByteTokenizer

LOOP = dict(t_on=0.55, t_off=0.05, alpha_on=0.9)


def method_config(name: str, steps: int, length: int) -> SamplerConfig:
  """Paper settings (top-p 0.9): tuned eta for T >= L and for T < L (Table 6)."""
  long = steps >= length
  table = {
      "MDLM": dict(strategy="mdlm"),
      "MDLM+FB": dict(strategy="fb"),
      "MDLM+DFM": dict(strategy="dfm"),
      "ReMDM-cap": dict(strategy="cap", eta=0.008 if long else 0.04),
      "ReMDM-rescale": dict(strategy="rescale", eta=0.015 if long else 0.045),
      "ReMDM-conf": dict(strategy="conf"),
      "ReMDM-loop": dict(strategy="loop", eta=0.02 if long else 0.055, **LOOP),
  }
  return sampler_config(num_steps=steps, top_p=0.9, **table[name])


def main():
  parser = ScriptParser(description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default=str(SHIPPED_MODEL))
  parser.add_argument("--evaluator", default=str(SHIPPED_MODEL.parent / "shakespeare-ar"))
  parser.add_argument("--out", required=True)
  parser.add_argument("--samples", type=int, default=256)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, nargs="*", default=None)
  parser.add_argument("--methods", nargs="*", default=None)
  parser.add_argument("--data-dir", default="data/tfds")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  check_lows(args, {"--samples": 1, "--batch-size": 1, "--steps": 1, "--seed": 0})
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  tok, model, evaluator = ByteTokenizer(), load_model(args.model), load_model(args.evaluator)
  length = model.cfg.max_length
  steps_grid = args.steps or [length // 8, length // 4, length // 2, length, 2 * length,
                              4 * length]
  methods = args.methods or ["MDLM", "MDLM+FB", "MDLM+DFM", "ReMDM-cap", "ReMDM-rescale",
                             "ReMDM-conf", "ReMDM-loop"]
  logits_fn, features_fn = as_evaluator(evaluator)
  data_cfg = data.DataConfig(data_dir=args.data_dir,
                             source_dir=str(pathlib.Path(args.data_dir) / "source"),
                             seq_len=length)
  _, valid = data_cfg.load_rows(tok)
  references = [tok.decode(r) for r in valid[:args.samples]]
  ref_features = metrics.evaluator_features(features_fn, tok, references, length,
                                            args.batch_size, add_bos=True)
  results_path = out / "scaling.json"
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  results["reference"] = {"gen_ppl": metrics.gen_ppl(logits_fn, tok, references, length,
                                                     args.batch_size, add_bos=True),
                          "entropy": metrics.mean_entropy(valid[:args.samples, 1:-1])}
  other = [tok.decode(r) for r in valid[args.samples:2 * args.samples]]   # the next chunks
  results["reference"]["mauve_heldout"] = metrics.mauve_score(
      metrics.evaluator_features(features_fn, tok, other, length, args.batch_size,
                                 add_bos=True), ref_features)
  graphdef, state = nnx.split(model)
  for name in methods:
    for steps in steps_grid:
      cfg = method_config(name, steps, length)
      if results.get(f"{name} T={steps}", {}).get("samples") == args.samples:
        continue  # finished by an earlier run of the same command
      run = jax.jit(lambda key, state, first, cfg=cfg: sample(
          key, as_denoiser(nnx.merge(graphdef, state)), cfg, batch_size=args.batch_size,
          seq_len=length, mask_id=tok.mask_id, first_index=first))
      tic = time.time()
      ids = np.concatenate([np.asarray(run(jax.random.key(args.seed), state, first))
                            for first in range(0, args.samples, args.batch_size)])
      texts = [tok.decode(r) for r in ids]
      feats = metrics.evaluator_features(features_fn, tok, texts, length, args.batch_size,
                                         add_bos=True)
      cell = {"mauve": metrics.mauve_score(feats, ref_features),
              "gen_ppl": metrics.gen_ppl(logits_fn, tok, texts, length, args.batch_size,
                                         add_bos=True),
              "entropy": metrics.mean_entropy(ids[:, 1:-1]), "seconds": time.time() - tic,
              "samples": args.samples, "config": cfg.options()}
      results[f"{name} T={steps}"] = cell
      print(f"{name} T={steps}: MAUVE {cell['mauve']:.3f}, Gen PPL {cell['gen_ppl']:.2f}, "
            f"entropy {cell['entropy']:.2f} ({cell['seconds']:.0f} s)", flush=True)
      results_path.write_text(json.dumps(results, indent=2) + "\n")
  write_table_and_plot(results, out, args.samples, length)


def write_table_and_plot(results: dict, out: pathlib.Path, samples: int, length: int) -> None:
  """`scaling.md` and `scaling.png` from every finished cell ("METHOD T=STEPS" keys)."""
  cells = {tuple(k.rsplit(" T=", 1)): v for k, v in results.items() if " T=" in k}
  methods = list(dict.fromkeys(name for name, _ in cells))
  steps_grid = sorted({int(steps) for _, steps in cells})
  header = "| method | " + " | ".join(f"T = {s}" for s in steps_grid) + " |"
  lines = [f"MAUVE / Gen PPL / entropy, {samples} samples per cell (- : not run).\n", header,
           "|---" * (len(steps_grid) + 1) + "|"]
  for name in methods:
    row = [cells.get((name, str(s))) for s in steps_grid]
    lines.append(f"| {name} | " + " | ".join(
        f"{c['mauve']:.3f} / {c['gen_ppl']:.2f} / {c['entropy']:.2f}" if c else "-"
        for c in row) + " |")
  for name in methods:
    calls = {s: len(build_table(method_config(name, s, length)).t)
             for s in steps_grid if (name, str(s)) in cells}
    if any(count != s for s, count in calls.items()):
      lines.append(f"\n{name} makes more denoiser calls than T (its adaptive grid): " +
                   ", ".join(f"T = {s}: {count}" for s, count in calls.items()) + ".")
  ref = results["reference"]
  lines.append(f"\nHeld-out text (the MAUVE reference): Gen PPL {ref['gen_ppl']:.2f}, entropy "
               f"{ref['entropy']:.2f}; MAUVE of the next {samples} held-out chunks against it: "
               f"{ref.get('mauve_heldout', float('nan')):.3f}.")
  (out / "scaling.md").write_text("\n".join(lines) + "\n")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name in methods:
    done = [s for s in steps_grid if (name, str(s)) in cells]
    for ax, key in zip(axes, ("mauve", "gen_ppl")):
      ax.plot(done, [cells[(name, str(s))][key] for s in done], marker="o", label=name)
  for ax, label in zip(axes, ("MAUVE (higher is better)", "Gen PPL (lower is better)")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampling steps T")
    ax.set_title(label)
  if "mauve_heldout" in ref:
    axes[0].axhline(ref["mauve_heldout"], color="grey", linestyle="--", label="held-out text")
  axes[1].axhline(ref["gen_ppl"], color="grey", linestyle="--", label="held-out text")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "scaling.png", dpi=120)


if __name__ == "__main__":
  sys.exit(run_cli(lambda argv: main() or 0, sys.argv[1:]))

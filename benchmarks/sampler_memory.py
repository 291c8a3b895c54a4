"""Sampler memory per device from XLA's compiled memory analysis (nothing is run).

For the DiT of a given size, compiles one sampler call (the whole scan) per batch size,
denoiser form (split head: logits only for the drawn rows; plain: `[B, L, V]` logits each
step) and logits dtype, and prints the bytes XLA plans for parameters, outputs and
temporaries; then extrapolates the largest batch that fits a device budget from the
per-example slope. The default is the released MDLM size (169M parameters, V = 50258) at
L = 1024, top-p 0.9, strategy cap.

  python benchmarks/sampler_memory.py [--batch-sizes 4 8] [--forms split plain]
      [--model-dtype bfloat16] [--budget-gib 80]

On a GPU the numbers come from that backend's compiler; on CPU they estimate it (fusion
decisions differ between backends, so treat CPU figures as an estimate).
"""

import argparse

import jax
import numpy as np
from flax import nnx

from remdm_jax import SamplerConfig, sample, sampler_config
from remdm_jax.models.dit import DiT, DiTConfig, as_denoiser

MIB = 2 ** 20


def planned_bytes(model_cfg: DiTConfig, cfg: SamplerConfig, batch_size: int,
                  form: str) -> dict:
  """XLA's planned argument, output and temporary bytes of one jitted sampler call; `form`
  "split" passes the DiT's split contract on, "plain" hides it (a `(z, t) -> logits` call)."""
  abstract = nnx.eval_shape(lambda: DiT(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)

  def denoiser(state):
    split = as_denoiser(nnx.merge(graphdef, state))
    return split if form == "split" else (lambda z, t: split(z, t))

  run = jax.jit(lambda key, state: sample(
      key, denoiser(state), cfg, batch_size=batch_size,
      seq_len=model_cfg.max_length, mask_id=model_cfg.vocab_size - 1))
  key = jax.eval_shape(lambda: jax.random.key(0))
  stats = run.lower(key, state).compile().memory_analysis()
  return {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
          "temporaries": stats.temp_size_in_bytes}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
  parser.add_argument("--forms", nargs="+", default=["split", "plain"],
                      choices=["split", "plain"])
  parser.add_argument("--logits-dtypes", nargs="+", default=["auto"],
                      choices=["auto", "float32", "bfloat16"])
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--vocab", type=int, default=50_258)
  parser.add_argument("--hidden", type=int, default=768)
  parser.add_argument("--blocks", type=int, default=12)
  parser.add_argument("--model-dtype", default="float32")
  parser.add_argument("--top-p", type=float, default=0.9)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--cache", action="store_true", help="cache logits across steps")
  parser.add_argument("--budget-gib", type=float, default=80.0)
  args = parser.parse_args()
  model_cfg = DiTConfig(vocab_size=args.vocab, hidden=args.hidden, heads=args.hidden // 64,
                        blocks=args.blocks, cond_dim=128, max_length=args.length,
                        dtype=args.model_dtype)
  print(f"backend {jax.default_backend()}, V={args.vocab}, L={args.length}, D={args.hidden}, "
        f"{args.blocks} blocks ({args.model_dtype}), top-p {args.top_p}, T={args.steps}, "
        f"cache {args.cache}")
  print("| denoiser | logits | batch | params MiB | temporaries MiB | per example MiB | "
        f"largest batch in {args.budget_gib:g} GiB |")
  print("|---|---|---|---|---|---|---|")
  for form, logits_dtype in [(f, d) for f in args.forms for d in args.logits_dtypes]:
    cfg = sampler_config(strategy="cap", eta=0.01, num_steps=args.steps, top_p=args.top_p,
                         logits_dtype=logits_dtype, cache=args.cache)
    rows = [(b, planned_bytes(model_cfg, cfg, b, form)) for b in args.batch_sizes]
    sizes = np.array([b for b, _ in rows], np.float64)
    temps = np.array([r["temporaries"] + r["outputs"] for _, r in rows], np.float64)
    slope, intercept = np.polyfit(sizes, temps, 1) if len(rows) > 1 else (temps[0], 0.0)
    fixed = rows[0][1]["arguments"] + intercept
    largest = int((args.budget_gib * 2 ** 30 - fixed) // slope)
    for b, r in rows:
      print(f"| {form} | {logits_dtype} | {b} | {r['arguments'] / MIB:.0f} | "
            f"{r['temporaries'] / MIB:.0f} | {slope / MIB:.0f} | {largest} |")


if __name__ == "__main__":
  main()

"""What particles cost: P particles in one call against P plain calls, and resampling's share
of a step. Prints a markdown table.

The model is a random LLaDA (float32) decoded with block decoding at temperature 0.7:
prompt 32, answer `--answer` (blocks of 32, one token per step), `--batch` examples. Rows:

- plain: one decode of the B examples; `P plain calls` is P of them with other keys;
- `B P rows, plain`: one plain decode of B x P rows, the physical limit of P particles (the
  model forward on every row, nothing else);
- `BestOfN(P)`: P particles per example, never resampled: its ratio to P plain calls is the
  issue's cost goal (at most 1.1), its ratio to the limit is the particle layer's overhead;
- `Smc(P) every step`: resampling forced after every step (`every=1`, `ess_threshold=1`:
  every example resamples, the whole carry, key-value caches included, is gathered); its
  extra time over BestOfN per step, as a share of a step, is resampling's cost (goal: at
  most 5%).

  python benchmarks/particles.py [--particles 4] [--batch 4] [--answer 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import numpy as np
from flax import nnx

import remdm_jax
from remdm_jax.models.llada import LLaDA, LLaDAConfig, as_denoiser
from remdm_jax.particles import BestOfN, Smc

PROMPT, BLOCK, VOCAB = 32, 32, 1024


def _model(layers: int, width: int):
  cfg = LLaDAConfig(vocab_size=VOCAB, d_model=width, n_layers=layers, n_heads=width // 64,
                    n_kv_heads=width // 64, mlp_hidden_size=4 * width,
                    max_sequence_length=1024, mask_id=VOCAB - 1, param_dtype="float32",
                    dtype="float32")
  return as_denoiser(LLaDA(cfg, rngs=nnx.Rngs(0)))


def _timed(call, repeats: int) -> float:
  """Median seconds of `repeats` calls after one warm-up (compile) call."""
  jax.block_until_ready(call(0))
  times = []
  for seed in range(1, repeats + 1):
    tic = time.perf_counter()
    jax.block_until_ready(call(seed))
    times.append(time.perf_counter() - tic)
  return statistics.median(times)


def _prompt(rows: int, length: int) -> np.ndarray:
  prompt = np.full((rows, length), VOCAB - 1, np.int32)
  prompt[:, :PROMPT] = np.random.default_rng(0).integers(0, VOCAB - 1, (rows, PROMPT))
  return prompt


def bench(args, kv_cache: str) -> list[tuple[str, float]]:
  """`(row name, seconds)` for one cache kind."""
  denoiser, num, batch = _model(args.layers, args.width), args.particles, args.batch
  length = PROMPT + args.answer
  cfg = remdm_jax.sampler_config("llada", block_length=BLOCK, temperature=0.7,
                                 kv_cache=kv_cache)

  def sampler(rows, particles=None):
    run = remdm_jax.make_sampler(denoiser, cfg, batch_size=rows, seq_len=length,
                                 mask_id=VOCAB - 1, particles=particles)
    prompt = _prompt(rows, length)
    return lambda seed: run(jax.random.key(seed), prompt=prompt)

  plain = sampler(batch)
  return [
      ("plain, B rows", _timed(plain, args.repeats)),
      (f"{num} plain calls", _timed(lambda s: [plain(s * num + p) for p in range(num)],
                                    args.repeats)),
      (f"B x {num} rows, plain (the limit)", _timed(sampler(batch * num), args.repeats)),
      (f"BestOfN({num})", _timed(sampler(batch, BestOfN(num)), args.repeats)),
      (f"Smc({num}) resampling every step",
       _timed(sampler(batch, Smc(num, every=1, ess_threshold=1.0)), args.repeats)),
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--particles", type=int, default=4)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--answer", type=int, default=64)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  steps = args.answer   # one token per step
  print(f"device: {jax.devices()[0].device_kind} ({platform.processor() or 'cpu'}), "
        f"LLaDA {args.layers} x {args.width}, V {VOCAB}, batch {args.batch}, "
        f"{args.particles} particles, prompt {PROMPT} + answer {args.answer}, {steps} steps\n")
  print("| cache | row | seconds | / P plain calls | / the limit |")
  print("|---|---|---:|---:|---:|")
  for kv_cache in ("none", "dual"):
    rows = dict(bench(args, kv_cache))
    names = list(rows)
    separate, limit = rows[names[1]], rows[names[2]]
    for name in names:
      print(f"| {kv_cache} | {name} | {rows[name]:.3f} | {rows[name] / separate:.2f} | "
            f"{rows[name] / limit:.2f} |")
    resampling = (rows[names[4]] - rows[names[3]]) / steps
    print(f"| {kv_cache} | resampling per step, share of a BestOfN step | "
          f"{resampling * 1e3:.2f} ms | {resampling / (rows[names[3]] / steps):.1%} | |")


if __name__ == "__main__":
  main()

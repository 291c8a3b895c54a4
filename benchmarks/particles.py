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
  most 5%);
- the gather alone: one jitted `gather_rows` of a carry of the decoder's shapes (its bytes
  read and written once), the floor of a resampling; the table gives resampling's cost per
  step over it.

  python benchmarks/particles.py [--particles 4] [--batch 4] [--answer 64] [--repeats 3]
      [--gather-repeats 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import jax
import numpy as np
from flax import nnx

import remdm_jax
from remdm_jax.models.llada import LLaDA, LLaDAConfig, as_denoiser
from remdm_jax.particles import BestOfN, Smc
from remdm_jax.sampling.decoder import Needs, RunShape
from remdm_jax.sampling.particle_scan import gather_rows

PROMPT, BLOCK, VOCAB = 32, 32, 1024


def _model(layers: int, width: int):
  cfg = LLaDAConfig(vocab_size=VOCAB, d_model=width, n_layers=layers, n_heads=width // 64,
                    n_kv_heads=width // 64, mlp_hidden_size=4 * width,
                    max_sequence_length=1024, mask_id=VOCAB - 1, param_dtype="float32",
                    dtype="float32")
  return as_denoiser(LLaDA(cfg, rngs=nnx.Rngs(0)))


def _config(kv_cache: str):
  return remdm_jax.sampler_config("llada", block_length=BLOCK, temperature=0.7,
                                  kv_cache=kv_cache)


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


def gather_floor(denoiser, cfg, rows: int, num: int, length: int,
                 repeats: int) -> tuple[float, int]:
  """`(median seconds, bytes)` of one jitted `gather_rows` over a zero carry of the shapes
  the plan's decoder starts with on `rows` rows (the particles' resampling gather, alone)."""
  plan = remdm_jax.build_plan(cfg)[0]
  prompt = jax.numpy.asarray(_prompt(rows, length))
  shape = RunShape(rows, length, VOCAB - 1)
  shape = dataclasses.replace(shape, extent=plan.rule.extent(prompt, shape))
  carry = jax.eval_shape(lambda: plan.rule.start(denoiser, plan, prompt, shape,
                                                 Needs(logp=True)).carry)
  carry = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), carry)
  ancestors = jax.random.randint(jax.random.key(0), (rows // num, num), 0, num)
  gather = jax.jit(gather_rows)
  size = sum(leaf.nbytes for leaf in jax.tree.leaves(carry))
  return _timed(lambda _: gather(carry, ancestors), repeats), size


def bench(args, denoiser, kv_cache: str) -> list[tuple[str, float]]:
  """`(row name, seconds)` for one cache kind."""
  num, batch = args.particles, args.batch
  length = PROMPT + args.answer
  cfg = _config(kv_cache)

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
  parser.add_argument("--gather-repeats", type=int, default=50)
  args = parser.parse_args()
  steps = args.answer   # one token per step
  print(f"device: {jax.devices()[0].device_kind} ({platform.processor() or 'cpu'}), "
        f"LLaDA {args.layers} x {args.width}, V {VOCAB}, batch {args.batch}, "
        f"{args.particles} particles, prompt {PROMPT} + answer {args.answer}, {steps} steps\n")
  print("| cache | row | seconds | / P plain calls | / the limit |")
  print("|---|---|---:|---:|---:|")
  denoiser = _model(args.layers, args.width)
  for kv_cache in ("none", "dual"):
    rows = dict(bench(args, denoiser, kv_cache))
    names = list(rows)
    separate, limit = rows[names[1]], rows[names[2]]
    for name in names:
      print(f"| {kv_cache} | {name} | {rows[name]:.3f} | {rows[name] / separate:.2f} | "
            f"{rows[name] / limit:.2f} |")
    resampling, step = (rows[names[4]] - rows[names[3]]) / steps, rows[names[3]] / steps
    floor, size = gather_floor(denoiser, _config(kv_cache),
                               args.batch * args.particles, args.particles,
                               PROMPT + args.answer, args.gather_repeats)
    print(f"| {kv_cache} | resampling per step, share of a BestOfN step | "
          f"{resampling * 1e3:.2f} ms | {resampling / step:.1%} | |")
    print(f"| {kv_cache} | the gather alone ({size / 1e6:.1f} MB), share of a step; "
          f"resampling / it | {floor * 1e3:.2f} ms | {floor / step:.1%} | "
          f"{resampling / floor:.2f} |")


if __name__ == "__main__":
  main()

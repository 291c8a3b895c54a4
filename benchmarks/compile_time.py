"""Compile time and repeated-call time of the sampler on CPU, with a tiny denoiser (so the
numbers are the sampler's own, not a model's).

  python benchmarks/compile_time.py

Prints (a) three direct `sample` calls and three `make_sampler` calls (the first compiles;
the others must reuse the executable), (b) trace+lower and XLA compile time per strategy.
"""

import time

import jax
import jax.numpy as jnp

import remdm_jax

B, L, V = 4, 16, 5


def apply(w, z, t):
  return w * (jnp.zeros(z.shape + (V,), jnp.float32) + 0.1 * z[..., None])


def seconds(fn) -> float:
  tic = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - tic


def main():
  cfg = remdm_jax.sampler_config("loop", num_steps=64, top_p=0.9)
  denoiser = lambda z, t: apply(1.0, z, t)
  direct = [seconds(lambda: remdm_jax.sample(jax.random.key(i), denoiser, cfg, batch_size=B,
                                             seq_len=L, mask_id=V - 1)) for i in range(3)]
  run = remdm_jax.make_sampler(remdm_jax.Denoiser(apply), cfg, batch_size=B, seq_len=L,
                               mask_id=V - 1)
  fast = [seconds(lambda: run(jax.random.key(i), jnp.float32(1.0 + i))) for i in range(3)]
  print("(a) calls, seconds (loop, T = 64, top-p 0.9, B = 4, L = 16, V = 5)\n")
  print("| path | call 1 | call 2 | call 3 |\n|---|---|---|---|")
  print("| sample(...) | " + " | ".join(f"{s:.3f}" for s in direct) + " |")
  print("| make_sampler(...)(key, params) | " + " | ".join(f"{s:.3f}" for s in fast) + " |")
  print("\n(b) per strategy, seconds\n\n| strategy | trace + lower | XLA compile |\n|---|---|---|")
  for name, cls in remdm_jax.STRATEGIES.items():
    if not issubclass(cls, remdm_jax.Strategy):   # block decoding: benchmarks/llada_decoding.py
      continue
    cfg = remdm_jax.sampler_config(name, num_steps=64, top_p=0.9)
    fn = jax.jit(lambda k, cfg=cfg: remdm_jax.sample(k, denoiser, cfg, batch_size=B,
                                                     seq_len=L, mask_id=V - 1,
                                                     return_nonfinite=True))
    tic = time.perf_counter()
    lowered = fn.lower(jax.random.key(0))
    traced = time.perf_counter() - tic
    compiled = seconds(lambda: lowered.compile() and jnp.zeros(()))
    print(f"| {name} | {traced:.2f} | {compiled:.2f} |")


if __name__ == "__main__":
  main()

"""Top-p threshold implementations alone: seconds per call on `[rows, V]` float32
probabilities (softmax of N(0, 2^2) logits), the rows' kept sets compared with a float64
sort. One run; best of `--repeats` calls after a compile.

  python benchmarks/top_p.py [--rows 256 4096] [--vocab 50258] [--impls sort bisect radix]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax import top_p_filter


def float64_kept_counts(probs: np.ndarray, top_p: float, mode: str) -> np.ndarray:
  """`[R]` sizes of the kept sets computed in float64 (the float32 `top_p` value)."""
  ordered = -np.sort(-probs.astype(np.float64), axis=1)
  cum = np.cumsum(ordered, axis=1)
  p = float(np.float32(top_p))
  kept = (cum <= p) if mode == "reference" else ((cum - ordered) < p)
  return np.maximum(kept.sum(1), 1)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", type=int, nargs="+", default=[256, 4096])
  parser.add_argument("--vocab", type=int, default=50_258)
  parser.add_argument("--impls", nargs="+", default=["sort", "bisect", "radix"])
  parser.add_argument("--mode", default="reference")
  parser.add_argument("--top-p", type=float, default=0.9)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"backend {jax.default_backend()}, V={args.vocab}, top-p {args.top_p} ({args.mode})\n")
  print("| rows | impl | s per call | GB/s of input | rows differing from float64 |")
  print("|---|---|---|---|---|")
  for rows in args.rows:
    logits = 2.0 * jax.random.normal(jax.random.key(0), (rows, args.vocab), jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).block_until_ready()
    truth = float64_kept_counts(np.asarray(probs), args.top_p, args.mode)
    for impl in args.impls:
      run = jax.jit(lambda x, impl=impl: top_p_filter(x, jnp.float32(args.top_p),
                                                      mode=args.mode, impl=impl))
      kept = np.asarray(run(probs) > 0).sum(1)
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        run(probs).block_until_ready()
        times.append(time.perf_counter() - start)
      best = min(times)
      print(f"| {rows} | {impl} | {best:.4f} | {probs.nbytes / best / 1e9:.2f} | "
            f"{int((kept != truth).sum())} |")


if __name__ == "__main__":
  main()

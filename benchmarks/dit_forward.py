"""One forward pass of the full-size MDLM DiT (169.6M parameters, random weights).

Prints parameter count, compile time, time per forward and the process's peak resident
memory, for batch 1 at L = 1024 by default.

  python benchmarks/dit_forward.py [--batch 1] [--length 1024] [--dtype float32]
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
from flax import nnx

from remdm_jax.models import DiT, DiTConfig


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args()
  model = DiT(DiTConfig(dtype=args.dtype), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  forward = jax.jit(lambda state, z, s: nnx.merge(graphdef, state)(z, s))
  tokens = jnp.zeros((args.batch, args.length), jnp.int32)
  sigma = jnp.zeros((args.batch,), jnp.float32)
  start = time.perf_counter()
  jax.block_until_ready(forward(state, tokens, sigma))
  first = time.perf_counter() - start
  times = []
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(forward(state, tokens, sigma))
    times.append(time.perf_counter() - start)
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  print("| params | batch | L | dtype | compile + first s | forward s (best of 3) | peak RSS MiB |")
  print("|---|---|---|---|---|---|---|")
  print(f"| {params:,} | {args.batch} | {args.length} | {args.dtype} | {first:.2f} | "
        f"{min(times):.3f} | {peak_mib:.0f} |")


if __name__ == "__main__":
  main()

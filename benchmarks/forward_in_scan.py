"""The same LLaDA forward timed alone and inside a loop: does a model call cost more inside the
decoder's `lax.scan` / `lax.while_loop` than jitted on its own?

  python benchmarks/forward_in_scan.py [--batches 1 16] [--steps 32] [--repeats 5]

A random 4 x 256 LLaDA (the speed model of `llada_decoding.py`, built here; V = 1024, L =
192). For each
batch size and each call (the dual cache's window of 32 rows + head; the prefill of the whole
sequence + head on 32 rows), one table row:

- alone: the call jitted by itself, its parameters and inputs as arguments (median of
  `--repeats` timed calls after one warm-up), the way `llada_decoding.py` and
  `continuous_batching.py` time their floors;
- scan / while: `--steps` calls chained through a `lax.scan` / `lax.while_loop` carry (each
  call's input depends on the previous output, so none is hoisted), per call;
- in the decoder: the lockstep block decoder's whole run divided by its model calls (every
  step a dual-cache window, the first of each block a prefill), beside the same calls at the
  alone costs.

A ratio near 1 means a call costs what it costs alone wherever it runs.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llada_decoding  # noqa: E402  (the speed model's shapes, the sharper head)

LENGTH, PROMPT, BLOCK = 192, 64, 32


def library_checkpoint(fields: dict, seed: int, folder: pathlib.Path) -> None:
  """A random checkpoint of the reference's shapes built by the library (output projection
  `LOGIT_SCALE` x sharper, mask-id row zero), for runs without the reference side."""
  from flax import nnx
  from remdm_jax.models.llada import LLaDA, LLaDAConfig
  from remdm_jax.weights.llada_io import save_llada
  import llada_reference
  config = {**llada_reference.BASE, **fields, "mask_token_id": fields["vocab_size"] - 1,
            "eos_token_id": fields["vocab_size"] - 2, "pad_token_id": fields["vocab_size"] - 2}
  cfg = LLaDAConfig.from_hf(config, dtype="float32")
  model = LLaDA(cfg, rngs=nnx.Rngs(seed))
  kernel = model.ff_out.kernel[...] * llada_decoding.LOGIT_SCALE
  model.ff_out.kernel[...] = kernel.at[:, cfg.mask_id].set(0.0)
  save_llada(model, folder)


def _median_seconds(call, repeats: int) -> float:
  import jax
  jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def calls_of(model, batch: int, length: int = LENGTH):
  """`{name: (fn(state, x) -> x, x0)}`: each call as a function of a carried `[B, W]` id array
  (the output's argmax feeds the next call), on rows of `length` with the window after a
  prompt of `PROMPT`."""
  import jax.numpy as jnp
  from flax import nnx
  graphdef, state = nnx.split(model)
  mask = model.cfg.mask_id
  z = jnp.full((batch, length), mask, jnp.int32).at[:, :PROMPT].set(3)
  cache = nnx.merge(graphdef, state).features_with_cache(z)[1]
  at = jnp.broadcast_to(jnp.arange(BLOCK, dtype=jnp.int32) + PROMPT, (batch, BLOCK))
  fresh = jnp.ones(at.shape, bool)

  def window(state, z_w):
    m = nnx.merge(graphdef, state)
    return jnp.argmax(m.project(m.features_cached(z_w, at, fresh, cache)), -1).astype(jnp.int32)

  def prefill(state, z):
    m = nnx.merge(graphdef, state)
    h, _ = m.features_with_cache(z)
    out = jnp.argmax(m.project(h[:, PROMPT:PROMPT + BLOCK]), -1).astype(jnp.int32)
    return z.at[:, PROMPT:PROMPT + BLOCK].set(out)

  return state, {"dual window [B, 32]": (window, z[:, PROMPT:PROMPT + BLOCK]),
                 "prefill [B, L]": (prefill, z)}


def time_calls(model, batch: int, steps: int, repeats: int, length: int = LENGTH) -> dict:
  """Seconds per call alone, in a scan and in a while loop, per call kind."""
  import jax
  state, calls = calls_of(model, batch, length)
  out = {}
  for name, (fn, x0) in calls.items():
    alone = jax.jit(fn)
    scan = jax.jit(lambda s, x: jax.lax.scan(lambda c, _: (fn(s, c), None), x, None,
                                             length=steps)[0])
    loop = jax.jit(lambda s, x: jax.lax.while_loop(
        lambda c: c[0] < steps, lambda c: (c[0] + 1, fn(s, c[1])), (0, x))[1])
    out[name] = {"alone": _median_seconds(lambda: alone(state, x0), repeats),
                 "scan": _median_seconds(lambda: scan(state, x0), repeats) / steps,
                 "while": _median_seconds(lambda: loop(state, x0), repeats) / steps}
  return out


def time_decoder(model, batch: int, repeats: int, costs: dict) -> tuple[float, float]:
  """(seconds of one lockstep dual-cache decode of `batch` prompts of 64 ids, the same model
  calls at the alone costs): 4 blocks of 32 steps, no threshold."""
  import jax
  import remdm_jax
  den, mask = remdm_jax.models.as_denoiser(model), model.cfg.mask_id
  cfg = remdm_jax.sampler_config("llada", block_length=BLOCK, num_steps=BLOCK,
                                 temperature=0.0, kv_cache="dual")
  prompt = np.full((batch, LENGTH), mask, np.int32)
  prompt[:, :PROMPT] = 3
  sampler = remdm_jax.make_sampler(den, cfg, batch_size=batch, seq_len=LENGTH, mask_id=mask)
  seconds = _median_seconds(lambda: sampler(jax.random.key(0), prompt=prompt), repeats)
  blocks = (LENGTH - PROMPT) // BLOCK
  floor = (blocks * costs["prefill [B, L]"]["alone"]
           + blocks * (BLOCK - 1) * costs["dual window [B, 32]"]["alone"])
  return seconds, floor


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
  parser.add_argument("--steps", type=int, default=32, help="calls per scan / while loop")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  from remdm_jax.weights.llada_io import load_llada
  with tempfile.TemporaryDirectory() as scratch:
    fields, seed = llada_decoding.PERF_CHECKPOINT
    library_checkpoint(fields, seed, pathlib.Path(scratch) / "perf")
    model = load_llada(pathlib.Path(scratch) / "perf", dtype="float32")
  print("| batch | call | alone ms | in scan ms | in while ms | scan / alone | while / alone |")
  print("|---|---|---|---|---|---|---|")
  decoders = []
  for batch in args.batches:
    costs = time_calls(model, batch, args.steps, args.repeats)
    for name, t in costs.items():
      print(f"| {batch} | {name} | {1e3 * t['alone']:.2f} | {1e3 * t['scan']:.2f} | "
            f"{1e3 * t['while']:.2f} | {t['scan'] / t['alone']:.2f} | "
            f"{t['while'] / t['alone']:.2f} |")
    decoders.append((batch, *time_decoder(model, batch, args.repeats, costs)))
  print("\n| batch | lockstep dual decode s | its calls alone s | floor / decode |")
  print("|---|---|---|---|")
  for batch, seconds, floor in decoders:
    print(f"| {batch} | {seconds:.2f} | {floor:.2f} | {floor / seconds:.2f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Sampler benchmark: prints markdown tables of what it measured, and where.

  (a) per strategy: sampler wall time against the denoiser calls the run needs x one jitted
      full denoiser call: T scan calls, plus the final noise removal when a position is still
      masked after the last step (it is skipped otherwise); efficiency = bound / actual;
  (b) the scan against a Python loop calling a jitted step (what a naive port does);
  (c) top-p implementations alone: benchmarks/top_p.py;
  (d) compile time of the sampler.
The denoiser is a small pre-LN transformer in plain JAX, with random weights.

  python benchmarks/sampler.py                      # CPU defaults (V = 1024, L = 256)
  python benchmarks/sampler.py --preset cpu-50k     # GPT-2 vocabulary, L = 256, batch 1
  python benchmarks/sampler.py --preset gpu         # V = 50258, L = 1024, batch 64
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp

import remdm_jax
from remdm_jax.sampling import topp
from remdm_jax.sampling.decoder import Needs, RunShape
from remdm_jax.sampling.step_rules import row_step_keys

PRESETS = {
    "cpu": dict(vocab=1024, seq_len=256, batch=8, steps=32, layers=4, hidden=256, heads=4),
    "cpu-50k": dict(vocab=50_258, seq_len=256, batch=1, steps=64, layers=4, hidden=256,
                    heads=4),
    "gpu": dict(vocab=50_258, seq_len=1024, batch=64, steps=128, layers=4, hidden=768,
                heads=12),
}


def make_transformer(key, vocab, seq_len, layers, hidden, heads):
  """Random-weight pre-LN transformer; returns (apply(params, z, t) -> logits, params)."""
  keys = iter(jax.random.split(key, 4 + 4 * layers))
  normal = lambda shape, scale: scale * jax.random.normal(next(keys), shape, jnp.float32)
  params = {"embed": normal((vocab, hidden), 1.0), "pos": normal((seq_len, hidden), 0.02),
            "out": normal((hidden, vocab), hidden ** -0.5),
            "blocks": [{"qkv": normal((hidden, 3 * hidden), hidden ** -0.5),
                        "proj": normal((hidden, hidden), hidden ** -0.5),
                        "up": normal((hidden, 4 * hidden), hidden ** -0.5),
                        "down": normal((4 * hidden, hidden), (4 * hidden) ** -0.5)}
                       for _ in range(layers)]}

  def norm(x):
    return (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)

  def features(params, z, t):
    del t
    x = params["embed"][z] + params["pos"]                             # [B, L, D]
    b, l, d = x.shape
    for blk in params["blocks"]:
      q, k, v = jnp.split(norm(x) @ blk["qkv"], 3, axis=-1)            # [B, L, D] each
      split = lambda y: y.reshape(b, l, heads, d // heads)              # [B, L, H, Dh]
      att = jax.nn.dot_product_attention(split(q), split(k), split(v))  # [B, L, H, Dh]
      x = x + att.reshape(b, l, d) @ blk["proj"]
      x = x + jax.nn.gelu(norm(x) @ blk["up"]) @ blk["down"]
    return norm(x)                                                      # [B, L, D]

  def apply(params, z, t):
    return features(params, z, t) @ params["out"]                       # [B, L, V]

  head = lambda params, h, t: h @ params["out"]                        # position-wise
  return remdm_jax.Denoiser(apply, features_apply=features, head_apply=head,
                            reads_t=False), params


def as_denoiser(model, params, split: bool):
  """The model with `params`, offering the features/head contract only when `split`."""
  if split:
    return model.with_params(params)
  return remdm_jax.Denoiser(model.apply, params, reads_t=False)


def timed(fn, *args, repeats=3):
  """(first-call seconds, best steady-state seconds) of a jitted function."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return first, best


STRATEGY_CONFIGS = {
    "mdlm": dict(), "cap": dict(eta=0.04), "rescale": dict(eta=0.045), "conf": dict(),
    "loop": dict(eta=0.02), "fb": dict(), "dfm": dict(), "topk": dict(),
}


def bench_strategies(args, apply, params, mask_id):
  call = jax.jit(apply.apply)
  z = jnp.full((args.batch, args.seq_len), mask_id, jnp.int32)
  t = jnp.ones((args.batch,), jnp.float32)
  _, per_call = timed(call, params, z, t)
  rows = []
  for name in args.strategies:
    extra = STRATEGY_CONFIGS[name]
    cfg = remdm_jax.sampler_config(strategy=name, num_steps=args.steps, top_p=args.top_p,
                                  top_p_impl=args.top_p_impl, **extra)
    plan, rule = remdm_jax.build_plan(cfg)
    run = jax.jit(lambda key, params, plan: remdm_jax.sample_with_plan(
        key, as_denoiser(apply, params, args.split_head), plan, rule, batch_size=args.batch,
        seq_len=args.seq_len, mask_id=mask_id))
    first, best = timed(run, jax.random.key(0), params, plan, repeats=args.repeats)
    last_step = remdm_jax.sample_with_plan(
        jax.random.key(0), as_denoiser(apply, params, args.split_head), plan, rule,
        batch_size=args.batch, seq_len=args.seq_len, mask_id=mask_id,
        return_trajectory=True).steps[-1]
    calls = plan.table.t.shape[0] + int(jnp.any(last_step == mask_id))
    rows.append((name, calls, best, calls * per_call / best, first - best))
  return per_call, rows


def bench_python_loop(args, apply, params, mask_id):
  """The scan against a Python loop over one jitted step (same step function)."""
  cfg = remdm_jax.sampler_config(strategy="loop", num_steps=args.steps, eta=0.02,
                                top_p=args.top_p, top_p_impl=args.top_p_impl)
  plan, rule = remdm_jax.build_plan(cfg)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(args.batch))
  shape = RunShape(args.batch, args.seq_len, mask_id)
  start = lambda params: rule.start(as_denoiser(apply, params, False), plan, None, shape,
                                    Needs())

  @jax.jit
  def one_step(params, carry, index, row):
    return start(params).step(carry, (index, row), row_step_keys(keys, index))[0]

  def python_loop(params):
    carry = start(params).carry
    for i in range(args.steps):
      row = jax.tree.map(lambda a: a[i], plan.table)
      carry = one_step(params, carry, jnp.int32(i), row)
    return carry[0]

  _, loop_time = timed(python_loop, params, repeats=args.repeats)
  scan = jax.jit(lambda params: remdm_jax.sample_with_plan(
      jax.random.key(0), as_denoiser(apply, params, False), plan, rule,
      batch_size=args.batch, seq_len=args.seq_len, mask_id=mask_id))
  _, scan_time = timed(scan, params, repeats=args.repeats)
  return loop_time, scan_time


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  parser.add_argument("--top-p", type=float, default=0.9)
  parser.add_argument("--top-p-impl", choices=topp.TOP_P_IMPLS, default="bisect")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--split-head", action="store_true",
                      help="give the sampler the features/head contract (output projection "
                           "only for drawn rows); efficiency stays against a full forward")
  parser.add_argument("--strategies", nargs="*", default=list(STRATEGY_CONFIGS),
                      choices=list(STRATEGY_CONFIGS))
  parser.add_argument("--skip", nargs="*", default=(), choices=("strategies", "loop"))
  args = parser.parse_args()
  for name, value in PRESETS[args.preset].items():
    setattr(args, name, value)
  vocab, mask_id = args.vocab, args.vocab - 1
  apply, params = make_transformer(jax.random.key(0), vocab, args.seq_len, args.layers,
                                   args.hidden, args.heads)
  device = jax.devices()[0]
  print(f"device: {device.device_kind} x{len(jax.devices())} ({platform.processor() or '?'}), "
        f"jax {jax.__version__}")
  print(f"denoiser: {args.layers}-layer transformer, D={args.hidden}, V={vocab}, "
        f"L={args.seq_len}, batch={args.batch}; T={args.steps}, top_p={args.top_p} "
        f"({args.top_p_impl}){', split head' if args.split_head else ''}\n")
  if "strategies" not in args.skip:
    per_call, rows = bench_strategies(args, apply, params, mask_id)
    print(f"(a, d) one jitted denoiser call: {per_call * 1e3:.2f} ms\n")
    print("| strategy | denoiser calls | sampler s | efficiency (calls x call / sampler) "
          "| compile s |")
    print("|---|---|---|---|---|")
    for name, calls, best, eff, compile_s in rows:
      print(f"| {name} | {calls} | {best:.3f} | {eff:.3f} | {compile_s:.2f} |")
    print()
  if "loop" not in args.skip:
    loop_time, scan_time = bench_python_loop(args, apply, params, mask_id)
    print("(b) loop strategy, scan vs Python loop over a jitted step\n")
    print("| driver | s | ratio |\n|---|---|---|")
    print(f"| lax.scan (one jit) | {scan_time:.3f} | 1.00 |")
    print(f"| Python loop | {loop_time:.3f} | {loop_time / scan_time:.2f} |\n")


if __name__ == "__main__":
  main()

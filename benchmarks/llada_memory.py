"""LLaDA-8B sampler memory per device, planned by XLA from shapes alone (no weights, nothing run).

Builds the released 8B model abstractly (`nnx.eval_shape`: 32 layers, D = 4096, V = 126464,
bfloat16), gives every parameter its `NamedSharding` by `llada_io.llada_shardings` (as
`load_llada(..., mesh=mesh)` would place it) and compiles `Sampler.compile` with the key and
parameters as `jax.ShapeDtypeStruct`s, on fake CPU devices. For each device layout, gen
length L and batch B it prints the parameter bytes per device and XLA's per-device plan.

XLA's CPU backend has no bfloat16 matmul: it converts every bfloat16 weight to float32
(one extra float32 copy of the weights among the temporaries) and runs the dots in
float32. A GPU or TPU multiplies bfloat16 directly, so the CPU plan of the released model
overstates them. Each cell is therefore compiled twice: as released (bfloat16; "CPU plan")
and with float32 weights and compute, whose temporaries are the activations alone, in
float32 (at least as large as bfloat16 ones). The estimate is the bfloat16 parameters plus
the outputs plus those float32 temporaries; "fits" compares it with the layout's memory:

  1gpu     1 device standing for one 80 GiB GPU (data parallelism would replicate this)
  tp8      8 chips of 16 GiB (a TPU v5e-8 slice), tensor parallel: mesh data 1 x model 8
  dp2tp4   the same 8 chips as data 2 x model 4 (batch split in two; B = 1 is skipped)

The sampler is the default `SamplerConfig` (MDLM, T = 128, no top-p) with the model's split
head: the trunk runs at every position, the output projection only on the drawn rows
(`logits_dtype` "auto": float32, as `LLaDA.project` emits). T does not change the plan.

  python benchmarks/llada_memory.py [--layouts 1gpu tp8 dp2tp4] [--seq-lens 256 512 1024]
      [--batch-sizes 1 8 64]

CPU figures estimate what a GPU or TPU compiler plans (fusion differs between backends).
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from remdm_jax import SamplerConfig, make_sampler  # noqa: E402
from remdm_jax.models.llada import LLaDA, LLaDAConfig, as_denoiser  # noqa: E402
from remdm_jax.weights.llada_io import llada_shardings  # noqa: E402

GIB = 2 ** 30
# name -> (mesh shape (data, model), device memory in GiB)
LAYOUTS = {"1gpu": ((1, 1), 80), "tp8": ((1, 8), 16), "dp2tp4": ((2, 4), 16)}


def abstract_params(den, mesh, cfg):
  """The denoiser's parameters as `ShapeDtypeStruct`s carrying their shardings."""
  shardings = llada_shardings(den.params, mesh, cfg)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      den.params, shardings)


def param_bytes_per_device(params) -> int:
  """Bytes of one device's shards of every parameter."""
  return sum(int(np.prod(p.sharding.shard_shape(p.shape))) * p.dtype.itemsize
             for p in jax.tree.leaves(params))


def plan(den, cfg, sampler_cfg, layout, seq_len, batch_size) -> dict:
  """XLA's per-device memory plan of one sampler call for one cell (`den` of `cfg`)."""
  (data, model), _ = LAYOUTS[layout]
  mesh = jax.make_mesh((data, model), ("data", "model"), devices=jax.devices()[:data * model],
                       axis_types=(AxisType.Auto, AxisType.Auto))
  params = abstract_params(den, mesh, cfg)
  sampler = make_sampler(den, sampler_cfg, batch_size=batch_size, seq_len=seq_len,
                         mask_id=cfg.mask_id, batch_sharding=NamedSharding(mesh, P("data")))
  start = time.perf_counter()
  stats = sampler.compile(jax.eval_shape(jax.random.key, 0), params).compiled() \
      .memory_analysis()
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes +
           stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  return {"params": param_bytes_per_device(params), "arguments": stats.argument_size_in_bytes,
          "outputs": stats.output_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
          "total": total, "compile_s": time.perf_counter() - start}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
  parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 512, 1024])
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
  args = parser.parse_args()
  cfg = LLaDAConfig()
  wide = dataclasses.replace(cfg, param_dtype="float32", dtype="float32")
  den, den32 = (as_denoiser(nnx.eval_shape(lambda c=c: LLaDA(c, rngs=nnx.Rngs(0))))
                for c in (cfg, wide))
  sampler_cfg = SamplerConfig()
  print(f"LLaDA-8B: {sum(p.size for p in jax.tree.leaves(den.params)) / 1e9:.2f}B parameters "
        f"({cfg.param_dtype}); sampler {sampler_cfg.strategy.name}, T = "
        f"{sampler_cfg.num_steps}, split head, logits_dtype {sampler_cfg.logits_dtype}; "
        f"jax {jax.__version__} on {jax.default_backend()}; GiB per device")
  print("| layout | L | B | params | CPU plan: temporaries | CPU plan: total | float32 "
        "temporaries | estimate | memory | fits | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for layout in args.layouts:
    (data, _), budget = LAYOUTS[layout]
    for seq_len in args.seq_lens:
      for batch_size in args.batch_sizes:
        if batch_size % data:
          print(f"| {layout} | {seq_len} | {batch_size} | B not divisible by data={data} "
                "| | | | | | | |")
          continue
        row = plan(den, cfg, sampler_cfg, layout, seq_len, batch_size)
        row32 = plan(den32, wide, sampler_cfg, layout, seq_len, batch_size)
        estimate = row["params"] + row["outputs"] + row32["temporaries"]
        gib = lambda n: f"{n / GIB:.2f}"
        print(f"| {layout} | {seq_len} | {batch_size} | {gib(row['params'])} | "
              f"{gib(row['temporaries'])} | {gib(row['total'])} | "
              f"{gib(row32['temporaries'])} | {gib(estimate)} | {budget} | "
              f"{'yes' if estimate <= budget * GIB else 'no'} | "
              f"{row['compile_s'] + row32['compile_s']:.0f} |", flush=True)


if __name__ == "__main__":
  main()

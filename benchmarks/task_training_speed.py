"""One training step of a task model (`remdm_jax.jobs.task_models.RECIPES`): JAX against the
reference PyTorch LLaDA modeling code, same weights, same batch, same CPU, interleaved.

JAX: the library's jitted step (`remdm_jax.training.loop.build_run`: LLaDA's SFT loss, AdamW,
global-norm clipping at 1.0, EMA of the weights; rate 1e-3, no warm-up, no weight decay).
Torch: `LLaDAModelLM` of Fast-dLLM's `llada/model/` (unchanged, eager: `TORCHDYNAMO_DISABLE=1`)
with the JAX initial weights (the folder `save_llada` writes), LLaDA's SFT loss as its
guidelines write it, `torch.optim.AdamW` (same settings), `clip_grad_norm_` and the same EMA.
It runs in a worker under `--reference-python` (JSON lines on stdin/stdout) with
`torch.set_num_threads(--threads)`, default `os.cpu_count()` (XLA uses every core too).
Measurements alternate (JAX step, torch step, JAX forward, torch forward, ...) so that other
load hits both; medians over `--steps` rounds after one warm-up round (JAX compile, first
torch step). Eval: tokens/s of one forward without gradients on the same batch. The warm-up
round uses the same masks on both sides (those the JAX step draws from its key): its loss and
gradient norm check that both sides compute the same step.

  benchmarks/prepare_references.sh DIR && export REMDM_REFERENCES=DIR
  python benchmarks/task_training_speed.py [--references DIR] [--reference-python PY] \
      [--reference-code MODEL_DIR] [--recipe sudoku] [--batch-size 64] [--steps 10]

`--reference-code`: `llada/model/` of NVlabs/Fast-dLLM at its pinned commit (`references.py`;
sha256 checked). `--reference-python` needs torch, transformers, safetensors, einops, numpy.
Rows: random ids in [4, V), the recipe's prompt length. The worker inherits the environment:
under other CPU load, libgomp's spin-waiting (torch's OpenMP threads) can slow the torch side
several times over; `OMP_WAIT_POLICY=PASSIVE` avoids that (XLA does not use OpenMP).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import references  # noqa: E402  (the pinned reference code)

EPS, RATE, CLIP, EMA = 1e-3, 1e-3, 1.0, 0.999   # SftObjective's eps; TrainConfig's defaults


# ---------------------------------------------------------------- reference side (torch)

def worker(folder: pathlib.Path, code: pathlib.Path, threads: int) -> None:
  """Answers JSON lines: {"op": "train", "first": bool} or {"op": "eval"} -> {"seconds", ...}."""
  import importlib
  import safetensors.torch
  import torch
  import torch.nn.functional as F
  import transformers
  import llada_reference   # its BASE: the released file's settings
  torch.set_num_threads(threads)
  transformers.logging.set_verbosity_error()   # the config's eos / pad ids lie outside V
  sys.path.insert(0, str(code.parent))
  package = importlib.import_module(code.name)
  fields = {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
            if k not in ("model_type", "architectures", "torch_dtype")}
  model = package.LLaDAModelLM(package.LLaDAConfig(**{**llada_reference.BASE, **fields}))
  model = model.float().train()
  model.config.use_cache = False   # transformers 5 drops the config's own use_cache
  model.load_state_dict(safetensors.torch.load_file(folder / "model.safetensors"), strict=True)
  data = np.load(folder / "batch.npz")
  tokens = torch.from_numpy(data["tokens"]).long()
  batch, length = tokens.shape
  prompt = torch.arange(length)[None] < torch.from_numpy(data["prompt_lengths"]).long()[:, None]
  answer_lengths = (~prompt).sum(1, keepdim=True).expand(batch, length)
  mask_id = fields["mask_token_id"]
  params = list(model.parameters())
  ema = [p.detach().clone() for p in params]
  opt = torch.optim.AdamW(params, lr=RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  updates = 0

  def train(first: bool):
    nonlocal updates
    if first:
      ratio, masked = torch.from_numpy(data["ratio"]), torch.from_numpy(data["masked"])
    else:
      ratio = (1 - EPS) * torch.rand(batch) + EPS
      masked = (torch.rand(batch, length) < ratio[:, None]) & ~prompt
    p_mask = ratio[:, None].expand(batch, length)
    logits = model(input_ids=torch.where(masked, mask_id, tokens)).logits
    token_loss = F.cross_entropy(logits[masked], tokens[masked], reduction="none") / p_mask[masked]
    loss = torch.sum(token_loss / answer_lengths[masked]) / batch
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
    opt.step()
    updates += 1
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1.0 - min(EMA, (1 + updates) / (10 + updates)))
    return {"loss": loss.item(), "grad_norm": norm.item()}

  def forward():
    with torch.no_grad():
      model(input_ids=tokens).logits.sum().item()
    return {}

  print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                    "threads": torch.get_num_threads(),
                    "params": sum(p.numel() for p in params)}), flush=True)
  for line in sys.stdin:
    ask = json.loads(line)
    start = time.perf_counter()
    out = train(ask.get("first", False)) if ask["op"] == "train" else forward()
    print(json.dumps({"seconds": time.perf_counter() - start, **out}), flush=True)


# ---------------------------------------------------------------- library side (jax)

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  references.add_flags(parser)
  parser.add_argument("--recipe", default="sudoku", help="a task recipe: sudoku, countdown")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10, help="timed rounds after the warm-up")
  parser.add_argument("--worker", type=pathlib.Path, help="internal: the reference side")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args(argv)
  if args.worker:
    worker(args.worker, args.reference_code.resolve(), args.threads)
    return 0
  references.checked_reference_side(args)
  python, code = args.reference_python, args.reference_code

  import jax
  import jax.numpy as jnp
  from flax import nnx
  from remdm_jax.jobs.task_models import recipe as get_recipe
  from remdm_jax.training.loop import TrainConfig, build_run
  from remdm_jax.training.objectives import SftObjective
  from remdm_jax.weights.llada_io import save_llada
  recipe = get_recipe(args.recipe)
  cfg, batch, length = recipe.model, args.batch_size, recipe.rows.seq_len
  train_cfg = TrainConfig(objective=SftObjective(eps=EPS), batch_size=batch, learning_rate=RATE,
                          warmup_steps=0, grad_clip=CLIP, ema_decay=EMA)
  run, state = build_run(cfg, train_cfg, cfg.mask_id)
  rng = np.random.default_rng(0)
  rows = {"tokens": rng.integers(4, cfg.vocab_size, (batch, length), dtype=np.int32),
          "prompt_lengths": np.full(batch, recipe.rows.prompt_length, np.int32)}
  # The first step's noise, as `sft_loss` draws it from the step's key.
  times_key, masks_key, _ = jax.random.split(
      jax.random.fold_in(jax.random.key(train_cfg.seed), 0), 3)
  ratio = np.asarray((1 - EPS) * jax.random.uniform(times_key, (batch,)) + EPS)
  answer = np.arange(length)[None] >= rows["prompt_lengths"][:, None]
  masked = (np.asarray(jax.random.uniform(masks_key, (batch, length))) < ratio[:, None]) & answer
  data = {k: jnp.asarray(v) for k, v in rows.items()}
  forward = jax.jit(lambda params, z: nnx.merge(run.graphdef, params, run.rest)(z))

  def jax_train():
    nonlocal state
    start = time.perf_counter()
    state, out = jax.block_until_ready(run.train_step(state, data))
    return {"seconds": time.perf_counter() - start, "loss": float(out["loss"]),
            "grad_norm": float(out["grad_norm"])}

  def jax_eval():
    start = time.perf_counter()
    jax.block_until_ready(forward(state["params"], data["tokens"]))
    return {"seconds": time.perf_counter() - start}

  with tempfile.TemporaryDirectory() as scratch:
    folder = pathlib.Path(scratch) / "model"
    save_llada(nnx.merge(run.graphdef, state["params"], run.rest), folder)
    np.savez(folder / "batch.npz", ratio=ratio, masked=masked, **rows)
    proc = subprocess.Popen(
        [str(python), __file__, "--worker", str(folder), "--reference-code", str(code),
         "--threads", str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=os.environ | {"TORCHDYNAMO_DISABLE": "1"})

    def ask(**request):
      if request:
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
      line = proc.stdout.readline()
      if not line:
        raise SystemExit(f"the reference worker ended (exit {proc.wait()})")
      return json.loads(line)

    versions = ask()
    first = (jax_train(), ask(op="train", first=True))   # compile; the same masks on both
    jax_eval(), ask(op="eval")
    sides = {"jax train": jax_train, "torch train": lambda: ask(op="train"),
             "jax eval": jax_eval, "torch eval": lambda: ask(op="eval")}
    times = {name: [] for name in sides}
    for _ in range(args.steps):   # in this order, round after round
      for name, measure in sides.items():
        times[name].append(measure()["seconds"])
    proc.stdin.close()
    proc.wait()

  med = {k: statistics.median(v) for k, v in times.items()}
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  print(f"jax {jax.__version__} ({jax.default_backend()}); torch {versions['torch']} "
        f"({versions['threads']} threads), transformers {versions['transformers']}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
  print(f"first step, same weights and masks: loss jax {first[0]['loss']:.6f} torch "
        f"{first[1]['loss']:.6f}; grad norm jax {first[0]['grad_norm']:.6f} torch "
        f"{first[1]['grad_norm']:.6f}; params jax {n_params:,} torch {versions['params']:,}")
  spread = ", ".join(f"{k} {1e3 * min(v):.0f}-{1e3 * max(v):.0f}" for k, v in times.items())
  print(f"medians of {args.steps} interleaved rounds (ms, min-max: {spread})\n")
  print("| recipe | params | batch | seq len | jax ms/step | torch ms/step | torch / jax | "
        "jax eval tok/s | torch eval tok/s | eval jax / torch |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  tokens = batch * length
  print(f"| {args.recipe} | {n_params:,} | {batch} | {length} | {1e3 * med['jax train']:.1f} | "
        f"{1e3 * med['torch train']:.1f} | {med['torch train'] / med['jax train']:.2f}x | "
        f"{tokens / med['jax eval']:,.0f} | {tokens / med['torch eval']:,.0f} | "
        f"{med['torch eval'] / med['jax eval']:.2f}x |")
  return 0


if __name__ == "__main__":
  sys.exit(main())

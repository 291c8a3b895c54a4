"""remdm-jax against the reference PyTorch sampler (kuleshov-group/remdm), same random weights.

For each vocabulary size: a reference `DIT` (4 blocks x 256 by default, L = 256) gets random
weights (every parameter N(0, 0.02), the zero-initialised output layers included); they are
saved as a released-style folder (`config.json` + `model.safetensors` with `backbone.` keys),
converted with `remdm_jax.weights.convert` and loaded as the Flax DiT. The two models' logits are
compared on one input, then both samplers run MDLM and ReMDM-cap (eta 0.008) at T = 64 with
top-p 0.9 and the final noise removal, per batch size. Reported: seconds per call (the
reference: one run; remdm-jax: best of 3 after compiling) and the ratio of samples per second.

  python benchmarks/reference_side_by_side.py --reference DIR [--vocab 50258 258] [--batch 1 4]

`DIR` holds the reference's `diffusion.py`, `noise_schedule.py` and `models/dit.py` (e.g. a
checkout of kuleshov-group/remdm). Needs torch (a CPU build), einops and omegaconf. The
reference DiT imports flash_attn (CUDA only); this script supplies CPU stand-ins for the two
functions it calls (the rotary embedding of q and k, and full attention via torch's
scaled_dot_product_attention) and empty modules for the training-stack imports that its
sampler does not use. The reference code itself runs unchanged.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile
import time
import types

import numpy as np


def _module(name: str, **attrs) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__dict__.update(attrs)
  sys.modules[name] = module
  return module


def _rotary_qkv(qkv, cos, sin):
  """flash_attn's `apply_rotary_emb_qkv_` (non-interleaved): rotates q and k in place;
  qkv `[B, S, 3, H, D]`, cos/sin `[S, D/2]`."""
  half = cos.shape[-1]
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  for i in (0, 1):
    x1, x2 = qkv[:, :, i, :, :half].clone(), qkv[:, :, i, :, half:2 * half].clone()
    qkv[:, :, i, :, :half] = x1 * cos - x2 * sin
    qkv[:, :, i, :, half:2 * half] = x1 * sin + x2 * cos
  return qkv


def _varlen_attention(qkv, cu_seqlens, max_seqlen, dropout_p, causal=False):
  """flash_attn's `flash_attn_varlen_qkvpacked_func` for equal lengths: `[(B S), 3, H, D] ->
  [(B S), H, D]`."""
  import torch.nn.functional as F
  total, _, heads, dim = qkv.shape
  qkv = qkv.reshape(total // max_seqlen, max_seqlen, 3, heads, dim).permute(2, 0, 3, 1, 4)
  out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=dropout_p,
                                       is_causal=causal)                 # [B, H, S, D]
  return out.permute(0, 2, 1, 3).reshape(total, heads, dim)


def load_reference(directory: pathlib.Path):
  """`(dit_module, noise_schedule_module, Diffusion)` from the reference files."""
  import torch
  rotary = _module("flash_attn.layers.rotary", apply_rotary_emb_qkv_=_rotary_qkv)
  interface = _module("flash_attn.flash_attn_interface",
                      flash_attn_varlen_qkvpacked_func=_varlen_attention)
  _module("flash_attn.layers", rotary=rotary)
  _module("flash_attn", layers=sys.modules["flash_attn.layers"], flash_attn_interface=interface)
  _module("huggingface_hub", PyTorchModelHubMixin=type("PyTorchModelHubMixin", (), {}))
  _module("hydra")
  _module("hydra.utils")
  _module("lightning", LightningModule=torch.nn.Module)
  _module("torchmetrics", aggregation=_module("torchmetrics.aggregation",
                                              MeanMetric=type("MeanMetric", (), {})))
  _module("transformers", PreTrainedTokenizer=type("PreTrainedTokenizer", (), {}))
  for name in ("dataloader", "utils"):
    _module(name)

  def load(name, path):
    spec = importlib.util.spec_from_file_location(name, directory / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

  dit = load("models.dit", "models/dit.py")
  _module("models", dit=dit)
  noise = load("noise_schedule", "noise_schedule.py")
  diffusion = load("diffusion", "diffusion.py")
  return dit, noise, diffusion.Diffusion


def reference_model(dit, args, vocab: int):
  import omegaconf
  import torch
  config = omegaconf.OmegaConf.create({"model": {
      "hidden_size": args.hidden, "cond_dim": args.cond_dim, "n_heads": args.heads,
      "n_blocks": args.blocks, "dropout": 0.0, "scale_by_sigma": False,
      "length": args.length}})
  torch.manual_seed(0)
  model = dit.DIT(config, vocab).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      param.copy_(0.02 * torch.randn_like(param) + (1.0 if "norm" in name else 0.0))
  return model


def save_released_folder(model, args, vocab: int, folder: pathlib.Path) -> None:
  from safetensors.numpy import save_file
  folder.mkdir(parents=True, exist_ok=True)
  tensors = {f"backbone.{k}": v.detach().cpu().numpy().astype(np.float32)
             for k, v in model.state_dict().items()}
  save_file(tensors, str(folder / "model.safetensors"))
  (folder / "config.json").write_text(json.dumps({
      "hidden_dim": args.hidden, "cond_dim": args.cond_dim, "n_blocks": args.blocks,
      "n_heads": args.heads, "vocab_size": vocab, "model_length": args.length,
      "time_conditioning": False}))


def reference_sampler(Diffusion, noise, model, args, vocab: int, batch: int, strategy: str):
  """A `Diffusion` holding only what its sampling methods read, and a run function."""
  import omegaconf
  import torch
  sampler = object.__new__(Diffusion)
  torch.nn.Module.__init__(sampler)
  sampler.backbone = model
  sampler.config = omegaconf.OmegaConf.create({
      "sampling": {"steps": args.steps, "nucleus_p": args.top_p, "dfm": False,
                   "noise_removal": True, "predictor": "ddpm_cache",
                   "sampler": {"mdlm": "mdlm", "cap": "remdm-cap"}[strategy],
                   "eta": args.eta},
      "noise": {"type": "loglinear"}, "loader": {"eval_batch_size": batch},
      "model": {"length": args.length}})
  sampler.noise = noise.LogLinearNoise()
  sampler.mask_index = vocab - 1
  sampler.neg_infinity = -1_000_000.0
  sampler.parameterization = "subs"
  sampler.time_conditioning = False
  sampler.sampler = "ddpm_cache"
  sampler.device = torch.device("cpu")

  def run():
    with torch.no_grad():
      return Diffusion._sample(sampler, num_steps=args.steps)
  return run


def ours(folder: pathlib.Path, args, vocab: int, batch: int, strategy: str):
  import remdm_jax
  from remdm_jax.models import denoiser_and_params
  model = remdm_jax.load_model(folder)
  apply, params = denoiser_and_params(model)
  extra = {"eta": args.eta} if strategy == "cap" else {}
  cfg = remdm_jax.sampler_config(strategy=strategy, num_steps=args.steps, top_p=args.top_p,
                                 **extra)
  sampler = remdm_jax.make_sampler(apply, cfg, batch_size=batch, seq_len=args.length,
                                   mask_id=vocab - 1)
  return model, lambda key: sampler(key, params).block_until_ready()


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reference", type=pathlib.Path, required=True)
  parser.add_argument("--vocab", type=int, nargs="+", default=[50_258, 258])
  parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
  parser.add_argument("--strategies", nargs="+", default=["mdlm", "cap"],
                      choices=["mdlm", "cap"])
  parser.add_argument("--steps", type=int, default=64)
  parser.add_argument("--top-p", type=float, default=0.9)
  parser.add_argument("--eta", type=float, default=0.008)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--blocks", type=int, default=4)
  parser.add_argument("--cond-dim", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  import jax
  import jax.numpy as jnp
  import torch
  dit, noise, Diffusion = load_reference(args.reference)
  print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__} "
        f"({jax.devices()[0].device_kind}); DiT {args.blocks} x {args.hidden}, "
        f"L = {args.length}, T = {args.steps}, top-p {args.top_p}\n")
  print("| V | batch | strategy | logits max abs diff | reference s | remdm-jax s | "
        "samples/s ratio |")
  print("|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for vocab in args.vocab:
      torch_model = reference_model(dit, args, vocab)
      released, converted = pathlib.Path(tmp, f"released-{vocab}"), pathlib.Path(
          tmp, f"converted-{vocab}")
      save_released_folder(torch_model, args, vocab, released)
      from remdm_jax.weights.convert import convert
      convert(released, converted)
      tokens = np.random.default_rng(0).integers(0, vocab, (2, args.length))
      with torch.no_grad():
        want = torch_model(torch.as_tensor(tokens), torch.zeros(2)).float().numpy()
      for batch in args.batch:
        for strategy in args.strategies:
          model, run_ours = ours(converted, args, vocab, batch, strategy)
          got = np.asarray(model(jnp.asarray(tokens, jnp.int32), jnp.zeros((2,))))
          diff = float(np.abs(got - want).max())
          run_ours(jax.random.key(0))                                   # compile
          times = []
          for i in range(args.repeats):
            start = time.perf_counter()
            run_ours(jax.random.key(i + 1))
            times.append(time.perf_counter() - start)
          ours_s = min(times)
          run_reference = reference_sampler(Diffusion, noise, torch_model, args, vocab, batch,
                                            strategy)
          start = time.perf_counter()
          out = run_reference()
          reference_s = time.perf_counter() - start
          assert out.shape == (batch, args.length)
          print(f"| {vocab} | {batch} | {strategy} | {diff:.2e} | {reference_s:.2f} | "
                f"{ours_s:.3f} | {reference_s / ours_s:.1f} |", flush=True)


if __name__ == "__main__":
  main()

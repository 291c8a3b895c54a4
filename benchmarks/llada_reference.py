"""remdm-jax's LLaDA against the reference PyTorch modeling code, on tiny random checkpoints.

The reference side runs in a separate Python that has torch and transformers (CPU builds are
enough): it builds `LLaDAModelLM` from a `LLaDAConfig` for each config below, gives every
parameter random float32 values (norm weights 1 + 0.3 N(0, 1), so a missing or misplaced
scale shows; matrices N(0, 1.5^2 / fan_in); the embedding N(0, 1)), saves it with
`save_pretrained(safe_serialization=True)` and a shard size that makes at least two shards
plus `model.safetensors.index.json`, reads the folder back into a new reference model (its
config class and `load_state_dict(strict=True)`) to check that the folder holds exactly that
model (logits equal bit for bit), and writes its logits for fixed tokens. The library side loads each folder with
`load_llada(dir, dtype="float32")` and compares. Then it breaks copies of one folder and
checks that each is refused with one line.

  benchmarks/prepare_references.sh DIR && export REMDM_REFERENCES=DIR
  python benchmarks/llada_reference.py [--references DIR] [--reference-python PY] \
      [--reference-code MODEL_DIR]

`--reference-code` is the folder holding `configuration_llada.py`, `modeling_llada.py` and
`__init__.py`: `llada/model/` of NVlabs/Fast-dLLM at its pinned commit (`references.py`;
each file's sha256 is checked, and a differing one is refused in one line); it is imported as
a package and runs unchanged. Its attention function is wrapped in `torch.compile`; the reference side sets
`TORCHDYNAMO_DISABLE=1`, so it runs eagerly (the same `F.scaled_dot_product_attention`
call) instead of compiling C++ on the CPU. Exits non-zero when a logit check or a refusal
check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import references  # noqa: E402  (the pinned reference code)

# Reference `LLaDAConfig` fields shared by every config: the released 8B file's settings.
BASE = {
    "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu",
    "rope": True, "rope_full_precision": True, "alibi": False, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "bias_for_layer_norm": False,
    "attention_layer_norm": False, "input_emb_norm": False, "block_group_size": 1,
    "multi_query_attention": None, "attention_dropout": 0.0, "residual_dropout": 0.0,
    "embedding_dropout": 0.0, "rms_norm_eps": 1e-5, "max_sequence_length": 64,
    "n_layers": 2, "init_device": "cpu",
}

# name -> (config fields over BASE, (batch, length) of the tokens).
CONFIGS = {
    "multi_head": ({"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 96,
                    "vocab_size": 101, "embedding_size": 101, "rope_theta": 500_000.0,
                    "weight_tying": False}, (2, 16)),
    "grouped_query": ({"d_model": 64, "n_heads": 8, "n_kv_heads": 2, "mlp_hidden_size": 80,
                       "vocab_size": 100, "embedding_size": 128, "rope_theta": 500_000.0,
                       "weight_tying": False}, (3, 24)),
    "multi_query_tied": ({"d_model": 32, "n_heads": 4, "n_kv_heads": 1,
                          "mlp_hidden_size": 64, "vocab_size": 67, "embedding_size": 67,
                          "rope_theta": 10_000.0, "weight_tying": True}, (1, 40)),
    "grouped_tied_scaled": ({"d_model": 48, "n_heads": 6, "n_kv_heads": 3,
                             "mlp_hidden_size": 72, "vocab_size": 90, "embedding_size": 96,
                             "rope_theta": 500_000.0, "weight_tying": True,
                             "scale_logits": True}, (2, 7)),
}


# ---------------------------------------------------------------- reference side (torch)

def _reference_model(package, fields: dict, seed: int):
  """A reference `LLaDAModelLM` in float32 with every parameter drawn from `seed`."""
  import torch
  vocab = fields["vocab_size"]
  config = package.LLaDAConfig(**BASE, **fields, mask_token_id=vocab - 1,
                               eos_token_id=vocab - 2, pad_token_id=vocab - 2)
  model = package.LLaDAModelLM(config).float().eval()
  model.config.use_cache = False   # transformers 5 drops the config's own use_cache
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if param.ndim == 1:
        param.copy_(1.0 + 0.3 * noise)
      else:
        param.copy_(noise * (1.0 if name.endswith("wte.weight") else
                             1.5 / param.shape[1] ** 0.5))
  return model


def _reference_logits(model, tokens: np.ndarray) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(tokens).long()).logits.float().numpy()


def _read_back(package, folder: pathlib.Path):
  """The saved folder as a new reference model: `config.json` through the reference's
  config class, every shard of the index into `load_state_dict(strict=True)`.
  (transformers 5's `from_pretrained` cannot build this model: its `__init__` does not call
  `post_init`.)"""
  import safetensors.torch
  index = json.loads((folder / "model.safetensors.index.json").read_text())
  state = {}
  for shard in sorted(set(index["weight_map"].values())):
    state |= safetensors.torch.load_file(folder / shard)
  model = package.LLaDAModelLM(package.LLaDAConfig.from_pretrained(folder)).float().eval()
  model.config.use_cache = False
  model.load_state_dict(state, strict=True)
  return model


def write_reference(code: pathlib.Path, workdir: pathlib.Path) -> None:
  """Writes `workdir/<name>/` (the saved folder, `tokens.npy`, `logits.npy`) per config."""
  import importlib
  import torch
  import transformers
  sys.path.insert(0, str(code.parent))
  package = importlib.import_module(code.name)
  torch.set_num_threads(2)
  for seed, (name, (fields, (batch, length))) in enumerate(CONFIGS.items()):
    model = _reference_model(package, fields, seed)
    folder = workdir / name / "checkpoint"
    total = sum(p.numel() * 4 for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=max(total // 3, 1))
    shards = sorted(folder.glob("*.safetensors"))
    if len(shards) < 2 or not (folder / "model.safetensors.index.json").is_file():
      raise SystemExit(f"{name}: save_pretrained wrote {[p.name for p in shards]}, expected "
                       "two or more shards and an index")
    rng = np.random.default_rng(100 + seed)
    tokens = rng.integers(0, fields["vocab_size"], (batch, length))
    tokens[rng.random((batch, length)) < 0.3] = fields["vocab_size"] - 1   # mask ids
    logits = _reference_logits(model, tokens)
    if not np.array_equal(_reference_logits(_read_back(package, folder), tokens), logits):
      raise SystemExit(f"{name}: the folder read back does not give the reference's logits")
    np.save(workdir / name / "tokens.npy", tokens.astype(np.int32))
    np.save(workdir / name / "logits.npy", logits)
    print(f"reference {name}: {len(shards)} shards, logits {list(logits.shape)}")
  print(f"reference: torch {torch.__version__}, transformers {transformers.__version__}")


# ---------------------------------------------------------------- library side (jax)

def compare(workdir: pathlib.Path, tolerance: float) -> bool:
  """Loads every folder with `load_llada`, prints the table; True when all pass."""
  import jax
  import jax.numpy as jnp
  from remdm_jax.weights.llada_io import load_llada
  print(f"\njax {jax.__version__}, {jax.default_backend()}; pass: max abs diff and max abs "
        f"diff / max |ref| both <= {tolerance:g}\n")
  print("| config | H / Hkv | tied | scale_logits | logits [B, L, V] | max abs diff | "
        "max rel diff | max abs ref | pass |")
  print("|---|---|---|---|---|---|---|---|---|")
  ok = True
  for name, (fields, _) in CONFIGS.items():
    model = load_llada(workdir / name / "checkpoint", dtype="float32")
    tokens = np.load(workdir / name / "tokens.npy")
    expected = np.load(workdir / name / "logits.npy")
    logits = np.asarray(jax.jit(lambda z: model(z))(jnp.asarray(tokens)))
    if logits.shape != expected.shape:
      print(f"| {name} | shapes differ: {list(logits.shape)} vs {list(expected.shape)} |")
      ok = False
      continue
    diff = np.abs(logits - expected).max()
    scale = np.abs(expected).max()
    passed = diff <= tolerance and diff / scale <= tolerance
    ok &= bool(passed)
    print(f"| {name} | {fields['n_heads']} / {fields['n_kv_heads']} | "
          f"{fields['weight_tying']} | {fields.get('scale_logits', False)} | "
          f"{list(logits.shape)} | {diff:.2e} | {diff / scale:.2e} | {scale:.2f} | "
          f"{'yes' if passed else 'NO'} |")
  return ok


def _rewrite_shard(folder: pathlib.Path, key: str, edit) -> None:
  """Rewrites the shard holding `key`: `edit(tensors)` changes the dict of its tensors."""
  from remdm_jax.weights.safetensors_io import SafetensorsFile, write_safetensors
  index_path = folder / "model.safetensors.index.json"
  index = json.loads(index_path.read_text())
  path = folder / index["weight_map"][key]
  stored = SafetensorsFile(path)
  tensors = {name: np.array(stored[name]) for name in stored.tensors}
  edit(tensors, index["weight_map"], path.name)
  write_safetensors(path, tensors)
  index_path.write_text(json.dumps(index))


def _break(folder: pathlib.Path, kind: str) -> None:
  """Breaks the folder in place, one way."""
  q0 = "model.transformer.blocks.0.q_proj.weight"
  if kind == "missing shard":
    (folder / json.loads((folder / "model.safetensors.index.json").read_text())
     ["weight_map"][q0]).unlink()
  elif kind == "wrong shape":
    _rewrite_shard(folder, q0, lambda t, m, s: t.update({q0: t[q0][:, :-1].copy()}))
  elif kind == "unknown key":
    extra = "model.transformer.blocks.0.q_norm.weight"
    _rewrite_shard(folder, q0, lambda t, m, s: (t.update({extra: np.ones(4, np.float32)}),
                                                m.update({extra: s})))
  elif kind == "missing key":
    _rewrite_shard(folder, q0, lambda t, m, s: (t.pop(q0), m.pop(q0)))
  elif kind == "missing config":
    (folder / "config.json").unlink()
  elif kind == "missing index":
    (folder / "model.safetensors.index.json").unlink()


# kind -> a phrase its one line must contain.
REFUSALS = {"missing shard": "missing shard file", "wrong shape": "has shape",
            "unknown key": "unknown tensor", "missing key": "missing tensor",
            "missing config": "config.json", "missing index": "safetensors index",
            "missing tokenizer": "tokenizer.json"}


def check_refusals(workdir: pathlib.Path) -> bool:
  """Each broken copy of the first folder raises one ValueError line naming the problem."""
  from remdm_jax.weights.llada_io import load_llada
  source = workdir / next(iter(CONFIGS)) / "checkpoint"
  print("\n| broken folder | refused with one line |\n|---|---|")
  ok = True
  for kind, phrase in REFUSALS.items():
    folder = workdir / "broken" / kind.replace(" ", "_")
    shutil.copytree(source, folder)
    _break(folder, kind)
    try:   # a released folder's tokenizer is read by HFTokenizer, the weights by load_llada
      if kind == "missing tokenizer":
        from remdm_jax.text.hf_tokenizer import HFTokenizer
        HFTokenizer(folder)
      else:
        load_llada(folder)
      line, good = "(loaded: not refused)", False
    except ValueError as err:
      line = str(err)
      good = bool(line) and "\n" not in line and phrase in line
    ok &= good
    print(f"| {kind} | {'' if good else 'FAIL: '}{line} |")
  return ok


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  references.add_flags(parser)
  parser.add_argument("--workdir", type=pathlib.Path, help="kept when given (default: a "
                      "temporary folder, removed at the end)")
  parser.add_argument("--tolerance", type=float, default=1e-4)
  parser.add_argument("--write-reference", action="store_true",
                      help="internal: the reference side, run under --reference-python")
  args = parser.parse_args(argv)
  if args.write_reference:
    write_reference(args.reference_code.resolve(), args.workdir)
    return 0
  references.checked_reference_side(args)
  with tempfile.TemporaryDirectory() as scratch:
    workdir = args.workdir or pathlib.Path(scratch)
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run([args.reference_python, __file__, "--write-reference", "--reference-code",
                    str(args.reference_code), "--workdir", str(workdir)], check=True,
                   env=os.environ | {"TORCHDYNAMO_DISABLE": "1"})
    logits_ok = compare(workdir, args.tolerance)
    refusals_ok = check_refusals(workdir)
  print(f"\nlogits: {'pass' if logits_ok else 'FAIL'}; refusals: "
        f"{'pass' if refusals_ok else 'FAIL'}")
  return 0 if logits_ok and refusals_ok else 1


if __name__ == "__main__":
  sys.exit(main())

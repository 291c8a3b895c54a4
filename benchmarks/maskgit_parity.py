"""MaskGIT in the library against the official code (google-research/maskgit), side by side.

The official linen modules write random-weight checkpoints in the released format (flax
msgpack files of `{"params": ...}`; every parameter, LayerNorm and GroupNorm included, drawn at
random); the library reads them as they are. Prints one markdown table:

- the transformer's logits (`remdm_jax.load_model(FILE)`, official ids: class token
  `label + 1024` first, mask -1) against `Transformer.apply`;
- the VQGAN decoder's pixels (`maskgit_io.load_decoder`) against `decode_from_indices`;
- MaskGIT's decoder (`MaskGitDecoderConfig`) against `parallel_decode.decode`: token for token
  at temperature 0 and choice temperature 0 (the official draw `jax.random.categorical` is
  replaced by the argmax for this row), and in distribution at temperature 1 and choice
  temperature 4.5 on a toy vocabulary whose 64 outcomes are counted exactly (two-sample
  chi-square test of the histograms);
- the time of a decode of both at one size, with the floor (T model calls, jitted alone).

The official code is the pinned checkout `maskgit/` of the folder that
`benchmarks/prepare_references.sh DIR` prepares (google-research/maskgit at 1db2359; its HEAD is
checked), or any checkout at that commit given by `--official`. It is imported, not installed:
its missing `ml_collections` is replaced by a small stand-in here, and `jnp.DeviceArray`
(gone from JAX) is aliased to `jax.Array`.

  python benchmarks/maskgit_parity.py --references DIR [--official CHECKOUT]
      [--samples 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import references
from sampler import timed
import remdm_jax
from remdm_jax.models.maskgit import as_denoiser, image_prompt
from remdm_jax.sampling.maskgit import MaskGitDecoderConfig
from remdm_jax.weights import maskgit_io, msgpack_io


class _ConfigDict:
  """The part of `ml_collections.ConfigDict` the official VQGAN reads (attribute access; not a
  dict, which linen would freeze)."""

  def __init__(self, values):
    for key, value in values.items():
      setattr(self, key, _ConfigDict(value) if isinstance(value, dict) else value)


def import_official(folder: str):
  """`(maskgit_transformer, vqgan_tokenizer, parallel_decode)` of the official checkout."""
  sys.modules.setdefault("ml_collections", types.SimpleNamespace(ConfigDict=_ConfigDict))
  if not hasattr(jnp, "DeviceArray"):
    jnp.DeviceArray = jax.Array
  sys.path.insert(0, folder)
  from maskgit.libml import parallel_decode
  from maskgit.nets import maskgit_transformer, vqgan_tokenizer
  return maskgit_transformer, vqgan_tokenizer, parallel_decode


def perturbed(variables, seed: int, scale: float):
  """Every leaf plus `scale` times standard normal noise (so no parameter keeps its init)."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [leaf + scale * jax.random.normal(k, leaf.shape)
                                   for leaf, k in zip(leaves, keys)])


def write(variables, path: str) -> str:
  from flax import serialization
  with open(path, "wb") as handle:
    handle.write(serialization.to_bytes(variables))
  return path


def official_transformer(mt, codebook, classes, hidden, layers, heads, tokens, seed, scale):
  """An official `Transformer` and its perturbed random variables."""
  net = mt.Transformer(vocab_size=codebook + classes + 1, hidden_size=hidden,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=4 * hidden, hidden_dropout_prob=0.1,
                       attention_probs_dropout_prob=0.1, max_position_embeddings=tokens + 1)
  ids = jnp.zeros((1, tokens + 1), jnp.int32)
  return net, perturbed(net.init(jax.random.key(seed), ids, deterministic=True), seed, scale)


def official_inputs(codebook, labels, tokens):
  """The official decode's input: class token `label + codebook`, then -1."""
  return jnp.concatenate([labels[:, None] + codebook,
                          -jnp.ones((len(labels), tokens), jnp.int32)], 1).astype(jnp.int32)


def logits_row(mt, folder):
  net, variables = official_transformer(mt, 1024, 1000, 64, 2, 4, 16, 0, 0.1)
  path = write(variables, f"{folder}/maskgit_tiny_checkpoint")
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, 1024, (8, 17)), jnp.int32).at[:, 0].set(
      1024 + jnp.asarray(rng.integers(0, 1000, 8))).at[:, 5:12].set(-1)
  ours = remdm_jax.load_model(path)(ids)
  theirs = net.apply(variables, ids, deterministic=True)
  return ("transformer logits [8, 17, 2025]", f"max abs diff {float(jnp.abs(ours - theirs).max()):.2e} "
          f"(values up to {float(jnp.abs(theirs).max()):.1f})")


def full_size_row(mt, folder):
  """The released ImageNet 256 x 256 configuration (24 layers of 768, 2,025 ids, 257
  positions) at random weights: the file it writes is as large as the released one."""
  net, variables = official_transformer(mt, 1024, 1000, 768, 24, 16, 256, 7, 0.02)
  path = write(variables, f"{folder}/maskgit_imagenet256_checkpoint")
  del variables
  model = remdm_jax.load_model(path)
  theirs_vars = msgpack_io.read_variables(path)
  rng = np.random.default_rng(2)
  ids = jnp.asarray(rng.integers(0, 1024, (2, 257)), jnp.int32).at[:, 0].set(1024 + 7).at[
      :, 100:200].set(-1)
  ours = jax.jit(lambda i: model(i))(ids)
  theirs = jax.jit(lambda v, i: net.apply(v, i, deterministic=True))(theirs_vars, ids)
  return ("ImageNet-256 size (24 x 768), logits [2, 257, 2025]",
          f"max abs diff {float(jnp.abs(ours - theirs).max()):.2e} (values up to "
          f"{float(jnp.abs(theirs).max()):.1f})")


def pixels_row(vq, folder):
  config = types.SimpleNamespace(vqvae=_ConfigDict(dict(
      quantizer="vq", codebook_size=64, filters=32, num_res_blocks=2,
      channel_multipliers=[1, 1, 2], embedding_dim=16, conv_downsample=False,
      activation_fn="swish", norm_type="GN", commitment_cost=0.25, entropy_loss_ratio=0.1,
      entropy_temperature=0.01, entropy_loss_type="softmax")))
  net = vq.VQVAE(config=config, dtype=jnp.float32, train=False)

  def encode_decode(module, images):   # the official __call__ passes a tuple to the decoder
    return module.decode(module.encode({"image": images})[0])

  images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  variables = perturbed(net.init(jax.random.key(2), images, method=encode_decode), 3, 0.1)
  path = write(variables, f"{folder}/tokenizer_tiny_checkpoint")
  codes = jnp.asarray(np.random.default_rng(1).integers(0, 64, (4, 8, 8)), jnp.int32)
  ours = maskgit_io.load_decoder(path).decode_from_indices(codes)
  theirs = net.apply(variables, codes, method=net.decode_from_indices)
  return ("VQGAN decode_from_indices [4, 32, 32, 3]",
          f"max abs diff {float(jnp.abs(ours - theirs).max()):.2e} (values up to "
          f"{float(jnp.abs(theirs).max()):.1f})")


def official_decode(pd, net, variables, codebook, inputs, key, steps, choice, greedy=False):
  to_logits = lambda seq: net.apply(variables, seq, deterministic=True)[..., :codebook]
  categorical = pd.jax.random.categorical
  if greedy:
    pd.jax.random.categorical = lambda k, logits, *a, **kw: jnp.argmax(logits, -1)
  try:
    out = pd.decode(inputs, key, to_logits, mask_token_id=-1, num_iter=steps,
                    choice_temperature=choice)
  finally:
    pd.jax.random.categorical = categorical
  return np.asarray(out[:, -1])


def ours_decode(net_path, labels, steps, choice, temperature, key, codebook=1024, classes=1000):
  model = maskgit_io.load_transformer(net_path, codebook_size=codebook, num_classes=classes)
  config = MaskGitDecoderConfig(num_steps=steps, choice_temperature=choice,
                                temperature=temperature)
  return np.asarray(remdm_jax.sample(
      key, as_denoiser(model), config, batch_size=len(labels), seq_len=model.cfg.seq_len,
      mask_id=model.cfg.mask_id, prompt=image_prompt(model.cfg, labels)))


def greedy_rows(mt, pd, folder):
  net, variables = official_transformer(mt, 1024, 1000, 64, 2, 4, 16, 4, 0.1)
  path = write(variables, f"{folder}/maskgit_greedy_checkpoint")
  labels = jnp.arange(64, dtype=jnp.int32) * 7
  rows = []
  for steps in (4, 8, 16):
    theirs = official_decode(pd, net, variables, 1024, official_inputs(1024, labels, 16),
                             jax.random.key(0), steps, 0.0, greedy=True)
    ours = ours_decode(path, labels, steps, 0.0, 0.0, jax.random.key(0))
    rows.append((f"decoder, temperature 0, T={steps}, 64 rows",
                 f"{int(np.all(ours == theirs, 1).sum())}/64 rows identical"))
  return rows


def distribution_row(mt, pd, folder, samples):
  codebook, tokens = 4, 3
  net, variables = official_transformer(mt, codebook, 2, 32, 2, 2, tokens, 5, 1.0)
  path = write(variables, f"{folder}/maskgit_toy_checkpoint")
  labels = jnp.zeros((samples,), jnp.int32)
  theirs = official_decode(pd, net, variables, codebook,
                           official_inputs(codebook, labels, tokens), jax.random.key(1), 3, 4.5)
  ours = ours_decode(path, labels, 3, 4.5, 1.0, jax.random.key(2), codebook, 2)
  index = lambda rows: rows[:, 1:] @ (codebook ** np.arange(tokens))
  a = np.bincount(index(theirs), minlength=codebook ** tokens)
  b = np.bincount(index(ours), minlength=codebook ** tokens)
  keep = (a + b) > 0
  _, p, _, _ = stats.chi2_contingency(np.stack([a[keep], b[keep]]))
  tv = 0.5 * np.abs(a / a.sum() - b / b.sum()).sum()
  return (f"decoder, temperature 1, choice 4.5, T=3: {samples} draws of 64 outcomes",
          f"total variation {tv:.4f}, chi-square p = {p:.2f}")


def timing_row(mt, pd, folder, repeats):
  hidden, layers, tokens, batch, steps = 256, 4, 256, 8, 16
  net, variables = official_transformer(mt, 1024, 1000, hidden, layers, 8, tokens, 6, 0.02)
  path = write(variables, f"{folder}/maskgit_timing_checkpoint")
  labels = jnp.arange(batch, dtype=jnp.int32)
  inputs = official_inputs(1024, labels, tokens)
  to_logits = lambda v, seq: net.apply(v, seq, deterministic=True)[..., :1024]
  official = jax.jit(lambda v, x, k: pd.decode(x, k, lambda s: to_logits(v, s), -1, steps,
                                               choice_temperature=4.5))
  model = maskgit_io.load_transformer(path)
  sampler = remdm_jax.make_sampler(as_denoiser(model), MaskGitDecoderConfig(num_steps=steps),
                                   batch_size=batch, seq_len=tokens + 1,
                                   mask_id=model.cfg.mask_id)
  forward = jax.jit(to_logits)
  prompt = image_prompt(model.cfg, labels)

  best = lambda fn: timed(fn, repeats=repeats)[1]
  t_official = best(lambda: official(variables, inputs, jax.random.key(0)))
  t_ours = best(lambda: sampler(jax.random.key(0), prompt=prompt))
  t_floor = steps * best(lambda: forward(variables, inputs))
  return (f"time, {layers} x {hidden} model, {tokens} tokens, batch {batch}, T={steps}",
          f"official {t_official * 1e3:.0f} ms, library {t_ours * 1e3:.0f} ms "
          f"({t_official / t_ours:.2f}x), floor {t_floor * 1e3:.0f} ms (library at "
          f"{t_floor / t_ours:.2f} of it)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--references", help=f"the folder that {references.PREPARE} prepared "
                      f"(default: ${references.ENVIRONMENT})")
  parser.add_argument("--official", help="a google-research/maskgit checkout at the pinned "
                      "commit (default: REFERENCES/maskgit)")
  parser.add_argument("--samples", type=int, default=20000)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--full", action="store_true",
                      help="also the released ImageNet-256 size (writes a 0.7 GB file)")
  args = parser.parse_args()
  official = references.under(args.official, args.references, "maskgit")
  references.check_commit("--official", "maskgit", official)
  mt, vq, pd = import_official(str(official))
  with tempfile.TemporaryDirectory() as folder:
    rows = [logits_row(mt, folder), pixels_row(vq, folder), *greedy_rows(mt, pd, folder),
            distribution_row(mt, pd, folder, args.samples),
            timing_row(mt, pd, folder, args.repeats)]
    if args.full:
      rows.insert(1, full_size_row(mt, folder))
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}\n")
  print("| check | result |\n|---|---|")
  for check, result in rows:
    print(f"| {check} | {result} |")


if __name__ == "__main__":
  main()

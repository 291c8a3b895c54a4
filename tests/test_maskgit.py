"""MaskGIT: the transformer and VQGAN decoder read from the released format, against NumPy
forwards written from the official modules' definitions; the loader's refusals; the
`Denoiser`; MaskGIT's decoder against a NumPy transcription of the official
`parallel_decode.decode`; every strategy on image tokens. The same checks against the official
code itself run in `benchmarks/maskgit_parity.py` (it needs a checkout)."""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
from scipy import stats

import remdm_jax
from remdm_jax import families, sampler_config
from remdm_jax.models.patches import PatchCodebook
from remdm_jax.models.maskgit import MaskGit, MaskGitConfig, as_denoiser, image_prompt
from remdm_jax.models.vqgan import VQGANDecoder, VQGANDecoderConfig
from remdm_jax.sampling.maskgit import MaskGitDecoderConfig, mask_ratios
from remdm_jax.weights import maskgit_io, msgpack_io

CODES, CLASSES, HIDDEN, HEADS, LAYERS, TOKENS = 1024, 3, 16, 2, 2, 4
VOCAB = CODES + CLASSES + 1


def official_tree(seed=0, vocab=VOCAB, hidden=HIDDEN, heads=HEADS, layers=LAYERS, tokens=TOKENS,
                  scale=0.5):
  """A random transformer in the official names and shapes (`{"params": ...}`)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: (scale * rng.standard_normal(shape)).astype(np.float32)
  d, h, k, i = hidden, heads, hidden // heads, 4 * hidden
  ln = lambda: {"scale": 1 + normal(d), "bias": normal(d)}
  dense = lambda a, b: {"kernel": normal(a, b), "bias": normal(b)}
  params = {"Embed_0": {"word_embeddings": {"embedding": normal(vocab, d)},
                        "position_embeddings": {"embedding": normal(tokens + 1, d)},
                        "embeddings_ln": ln()},
            "MlmLayer_0": {"mlm_dense": dense(d, d), "mlm_ln": ln(),
                           "mlm_bias": {"bias": normal(vocab)}}}
  for n in range(layers):
    attention = {name: {"kernel": normal(d, h, k), "bias": normal(h, k)}
                 for name in ("query", "key", "value")}
    attention["out"] = {"kernel": normal(h, k, d), "bias": normal(d)}
    params[f"TransformerLayer_{n}"] = {
        "Attention_0": {"self_attention": attention, "attention_output_ln": ln()},
        "Mlp_0": {"intermediate_output": dense(d, i), "layer_output": dense(i, d),
                  "layer_output_ln": ln()}}
  return {"params": params}


def write(path, tree):
  path.write_bytes(serialization.msgpack_serialize(tree))
  return path


def numpy_forward(tree, ids):
  """The official Transformer's forward in NumPy (float64): BERT, post-LN, eps 1e-12, tanh
  GELU, tied MLM head plus bias; id -1 reads the last embedding row."""
  p = tree["params"]
  gelu = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

  def ln(x, q):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * q["scale"] + q["bias"]

  table = p["Embed_0"]["word_embeddings"]["embedding"].astype(np.float64)
  x = table[ids] + p["Embed_0"]["position_embeddings"]["embedding"][:ids.shape[1]]
  x = ln(x, p["Embed_0"]["embeddings_ln"])
  n = 0
  while f"TransformerLayer_{n}" in p:
    layer = p[f"TransformerLayer_{n}"]
    att = layer["Attention_0"]["self_attention"]
    q, k, v = (np.einsum("bld,dhk->blhk", x, att[name]["kernel"]) + att[name]["bias"]
               for name in ("query", "key", "value"))
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    mixed = np.einsum("bhqs,bshk->bqhk", weights, v)
    a = np.einsum("bqhk,hkd->bqd", mixed, att["out"]["kernel"]) + att["out"]["bias"]
    a = ln(a + x, layer["Attention_0"]["attention_output_ln"])
    mlp = layer["Mlp_0"]
    hidden = gelu(a @ mlp["intermediate_output"]["kernel"] + mlp["intermediate_output"]["bias"])
    x = ln(hidden @ mlp["layer_output"]["kernel"] + mlp["layer_output"]["bias"] + a,
           mlp["layer_output_ln"])
    n += 1
  head = p["MlmLayer_0"]
  m = ln(gelu(x @ head["mlm_dense"]["kernel"] + head["mlm_dense"]["bias"]), head["mlm_ln"])
  return m @ table.T + head["mlm_bias"]["bias"]


def official_ids(rng, batch=3):
  ids = rng.integers(0, CODES, (batch, TOKENS + 1))
  ids[:, 0] = CODES + rng.integers(0, CLASSES, batch)
  ids[:, 2:4] = -1
  return ids.astype(np.int32)


def test_load_model_reads_a_released_file_and_gives_the_official_logits(tmp_path):
  tree = official_tree()
  path = write(tmp_path / "maskgit_tiny_checkpoint", tree)
  model = remdm_jax.load_model(path)
  assert isinstance(model, MaskGit)
  assert (model.cfg.codebook_size, model.cfg.num_classes, model.cfg.num_tokens,
          model.cfg.hidden_size, model.cfg.num_layers, model.cfg.num_heads,
          model.cfg.intermediate_size) == (CODES, CLASSES, TOKENS, HIDDEN, LAYERS, HEADS,
                                           4 * HIDDEN)
  ids = official_ids(np.random.default_rng(1))
  logits = jax.jit(lambda i: model(i))(ids)
  assert logits.shape == (3, TOKENS + 1, VOCAB) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, numpy_forward(tree, ids), rtol=1e-4, atol=1e-4)
  explicit = np.where(ids == -1, VOCAB - 1, ids)       # the official -1 is row V - 1
  np.testing.assert_allclose(model(jnp.asarray(explicit)), logits, rtol=1e-5, atol=1e-5)


def test_the_released_sizes_default_to_1024_codes_and_1000_classes(tmp_path):
  tree = official_tree(vocab=2025, tokens=3, layers=1)
  model = maskgit_io.load_transformer(write(tmp_path / "m", tree))
  assert (model.cfg.codebook_size, model.cfg.num_classes, model.cfg.mask_id) == (1024, 1000,
                                                                                 2024)


def test_save_transformer_writes_the_released_format(tmp_path):
  tree = official_tree(seed=3)
  model = maskgit_io.load_transformer(write(tmp_path / "a", tree))
  maskgit_io.save_transformer(model, tmp_path / "b")
  again = msgpack_io.read_variables(tmp_path / "b")
  flat, before = msgpack_io.flatten(again), msgpack_io.flatten(tree)
  assert sorted(flat) == sorted(before)
  for name, value in before.items():
    np.testing.assert_array_equal(flat[name], value)


def _broken(tree, name, value):
  flat = msgpack_io.flatten(tree)
  if value is None:
    del flat[name]
  else:
    flat[name] = value
  return msgpack_io.unflatten(flat)


@pytest.mark.parametrize("change, message", [
    (lambda t: _broken(t, "params/TransformerLayer_1/Mlp_0/layer_output/bias", None),
     "parameter params/TransformerLayer_1/Mlp_0/layer_output/bias is missing"),
    (lambda t: _broken(t, "params/MlmLayer_0/mlm_ln/scale", np.zeros(7, np.float32)),
     "parameter params/MlmLayer_0/mlm_ln/scale has shape [7], expected [16]"),
    (lambda t: _broken(t, "params/Extra/kernel", np.zeros(2, np.float32)),
     "unexpected parameter params/Extra/kernel"),
    (lambda t: _broken(t, "params/MlmLayer_0/mlm_bias/bias", np.zeros(VOCAB, np.int32)),
     "parameter params/MlmLayer_0/mlm_bias/bias must be a float array"),
    (lambda t: _broken(t, "params/Embed_0/word_embeddings/embedding",
                       np.zeros((1020, HIDDEN), np.float32)),
     "cannot hold codebook_size=1024 codes"),
])
def test_a_broken_checkpoint_is_refused_in_one_line_naming_the_parameter(tmp_path, change,
                                                                         message):
  path = write(tmp_path / "broken", change(official_tree()))
  with pytest.raises(ValueError, match=re.escape(message)) as err:
    remdm_jax.load_model(path)
  assert "\n" not in str(err.value) and str(path.absolute()) in str(err.value)


def test_files_that_are_not_checkpoints_are_refused(tmp_path, monkeypatch):
  for name, data in (("notes.txt", b"hello"), ("model.ckpt", b"\x80\x04pickle"),
                     ("list", serialization.msgpack_serialize([1, 2, 3]))):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match="is a file that no registered model family reads"):
      remdm_jax.load_model(tmp_path / name)
  (tmp_path / "cut").write_bytes(write(tmp_path / "whole", official_tree()).read_bytes()[:200])
  with pytest.raises(ValueError, match="not a flax msgpack MaskGIT transformer checkpoint"):
    remdm_jax.load_model(tmp_path / "cut")
  monkeypatch.setattr(msgpack_io, "MAX_BYTES", 100)
  with pytest.raises(ValueError, match="over the 100-byte bound"):
    remdm_jax.load_model(tmp_path / "whole")
  with pytest.raises(ValueError, match="a MaskGIT model runs in float32"):
    remdm_jax.load_model(tmp_path / "whole", dtype="bfloat16")


def test_sizes_that_make_no_model_are_refused_naming_the_file(tmp_path):
  flat = msgpack_io.flatten(official_tree())
  flat["params/Embed_0/word_embeddings/embedding"] = np.zeros((VOCAB, HIDDEN, 1), np.float32)
  path = write(tmp_path / "rank", msgpack_io.unflatten(flat))
  with pytest.raises(ValueError, match="embedding must have 2 axes, got shape"):
    remdm_jax.load_model(path)
  flat = msgpack_io.flatten(official_tree(tokens=0))
  path = write(tmp_path / "positions", msgpack_io.unflatten(flat))
  with pytest.raises(ValueError, match=r"positions: sizes read from the shapes do not make a "
                                       r"model \(num_tokens must be in"):
    remdm_jax.load_model(path)
  flat = msgpack_io.flatten(official_tree())
  flat["params/MlmLayer_0/mlm_ln/bias"][3] = np.nan
  with pytest.raises(ValueError, match="parameter params/MlmLayer_0/mlm_ln/bias holds NaN"):
    remdm_jax.load_model(write(tmp_path / "nan", msgpack_io.unflatten(flat)))


def test_ids_outside_the_vocabulary_are_refused(tiny):
  with pytest.raises(ValueError, match=r"ids must lie in \[-1, 1028\) \(-1: the mask\), got "
                                       r"-2..5"):
    tiny(jnp.asarray([[-2, 5]]))


# The VQGAN decoder ------------------------------------------------------------------------


def official_decoder_tree(rng, codes=8, dim=4, widths=(32, 64), blocks=1):
  """A random VQGAN tokenizer tree in the official names (decoder, codebook and an encoder
  entry the loader must ignore)."""
  normal = lambda *shape: (0.3 * rng.standard_normal(shape)).astype(np.float32)
  gn = lambda w: {"scale": 1 + normal(w), "bias": normal(w)}
  dec, width, conv, block = {}, widths[-1], [0], [0]

  def add_conv(cin, cout):
    dec[f"Conv_{conv[0]}"] = {"kernel": normal(3, 3, cin, cout), "bias": normal(cout)}
    conv[0] += 1

  def add_block(cin, cout):
    entry = {"GroupNorm_0": gn(cin), "Conv_0": {"kernel": normal(3, 3, cin, cout)},
             "GroupNorm_1": gn(cout), "Conv_1": {"kernel": normal(3, 3, cout, cout)}}
    if cin != cout:
      entry["Conv_2"] = {"kernel": normal(1, 1, cout, cout)}
    dec[f"ResBlock_{block[0]}"] = entry
    block[0] += 1

  add_conv(dim, width)
  for _ in range(blocks):
    add_block(width, width)
  for level in reversed(range(len(widths))):
    for _ in range(blocks):
      add_block(width, widths[level])
      width = widths[level]
    if level:
      add_conv(width, width)
  dec["GroupNorm_0"] = gn(width)
  add_conv(width, 3)
  return {"params": {"decoder": dec, "quantizer": {"codebook": normal(codes, dim)},
                     "encoder": {"Conv_0": {"kernel": normal(3, 3, 3, 8)}}}}


def numpy_decode(tree, ids):
  """The official decoder in NumPy: SAME 3x3 convs, GroupNorm(32, eps 1e-6), swish, nearest 2x
  upsampling, the residual block's shortcut applied to its own output."""
  p, q = tree["params"]["decoder"], tree["params"]["quantizer"]["codebook"]
  swish = lambda x: x / (1 + np.exp(-x))

  def conv(x, c):
    kernel, size = c["kernel"], c["kernel"].shape[0]
    pad = size // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = sum(np.einsum("bhwc,cd->bhwd", padded[:, i:i + x.shape[1], j:j + x.shape[2]],
                        kernel[i, j]) for i in range(size) for j in range(size))
    return out + c.get("bias", 0.0)

  def gn(x, g):
    b, h, w, c = x.shape
    grouped = x.reshape(b, h, w, 32, c // 32)
    mean = grouped.mean((1, 2, 4), keepdims=True)
    var = grouped.var((1, 2, 4), keepdims=True)
    return ((grouped - mean) / np.sqrt(var + 1e-6)).reshape(x.shape) * g["scale"] + g["bias"]

  def block(x, r):
    h = conv(swish(gn(x, r["GroupNorm_0"])), r["Conv_0"])
    h = conv(swish(gn(h, r["GroupNorm_1"])), r["Conv_1"])
    return h + (conv(h, r["Conv_2"]) if "Conv_2" in r else x)

  convs = sorted((k for k in p if k.startswith("Conv_")), key=lambda k: int(k[5:]))
  blocks = sorted((k for k in p if k.startswith("ResBlock_")), key=lambda k: int(k[9:]))
  levels, per = len(convs) - 1, len(blocks) // len(convs)
  x = conv(q[ids].astype(np.float64), p[convs[0]])
  for name in blocks[:per]:
    x = block(x, p[name])
  for index, level in enumerate(reversed(range(levels))):
    for name in blocks[per * (index + 1):per * (index + 2)]:
      x = block(x, p[name])
    if level:
      x = conv(x.repeat(2, 1).repeat(2, 2), p[convs[index + 1]])
  return conv(swish(gn(x, p["GroupNorm_0"])), p[convs[-1]])


def test_the_vqgan_decoder_reads_a_released_tokenizer_and_matches_its_definition(tmp_path):
  rng = np.random.default_rng(0)
  tree = official_decoder_tree(rng)
  decoder = maskgit_io.load_decoder(write(tmp_path / "tokenizer_tiny_checkpoint", tree))
  assert decoder.cfg == VQGANDecoderConfig(codebook_size=8, embedding_dim=4, widths=(32, 64),
                                           num_res_blocks=1, output_dim=3)
  ids = rng.integers(0, 8, (2, 3, 3)).astype(np.int32)
  pixels = jax.jit(decoder.decode_from_indices)(ids)
  assert pixels.shape == (2, 6, 6, 3) and pixels.dtype == jnp.float32
  np.testing.assert_allclose(pixels, numpy_decode(tree, ids), rtol=1e-4, atol=1e-4)
  flat = np.asarray(decoder.decode_tokens(jnp.asarray(ids.reshape(2, 9))))
  np.testing.assert_allclose(flat, np.clip(pixels, 0, 1), atol=1e-5)
  bad = _broken(tree, "params/decoder/ResBlock_2/Conv_2/kernel", None)
  with pytest.raises(ValueError, match="parameter params/decoder/ResBlock_2/Conv_2/kernel is "
                                       "missing"):
    maskgit_io.load_decoder(write(tmp_path / "bad", bad))


# Folders ------------------------------------------------------------------------------------


def test_a_released_folder_and_a_folder_trained_here_load_with_their_tokenizers(tmp_path):
  released = tmp_path / "released"
  released.mkdir()
  write(released / "maskgit_tiny_checkpoint", official_tree())
  write(released / "tokenizer_tiny_checkpoint", official_decoder_tree(np.random.default_rng(1)))
  assert families.for_folder(released).name == "maskgit"
  assert isinstance(remdm_jax.load_model(released), MaskGit)
  assert isinstance(families.get("maskgit").tokenizer(released), VQGANDecoder)

  cfg = MaskGitConfig(codebook_size=4, num_classes=3, num_tokens=4, hidden_size=8,
                      num_layers=1, num_heads=2, intermediate_size=16, null_class=2)
  model = MaskGit(cfg, rngs=__import__("flax").nnx.Rngs(0))
  codebook = PatchCodebook(2, 4, np.eye(4, dtype=np.float32))
  families.get("maskgit").save(model, tmp_path / "mine", tokenizer=codebook, step=7)
  loaded = remdm_jax.load_model(tmp_path / "mine")
  assert loaded.cfg == cfg
  assert families.get("maskgit").exported_step(tmp_path / "mine") == 7
  ids = jnp.asarray([[5, 0, 1, 2, 7]])
  np.testing.assert_array_equal(loaded(ids), model(ids))
  assert families.get("maskgit").tokenizer(tmp_path / "mine").codebook_size == 4
  maskgit_io.check_fit(cfg, codebook, "mine")
  with pytest.raises(ValueError, match="the image tokenizer has 4 codes and 4 tokens per image, "
                                       "the transformer 4 and 9"):
    maskgit_io.check_fit(dataclasses.replace(cfg, num_tokens=9), codebook, "mine")
  with pytest.raises(ValueError, match="needs its image tokenizer, a PatchCodebook, got "
                                       "NoneType"):
    families.get("maskgit").save(model, tmp_path / "other")


def test_a_manifest_cannot_point_outside_its_folder(tmp_path):
  folder = tmp_path / "model"
  folder.mkdir()
  write(tmp_path / "outside", official_tree())
  (folder / "link").symlink_to(tmp_path / "outside")
  for name in ("../outside", "link"):
    (folder / "maskgit.json").write_text(f'{{"transformer": "{name}", "codebook_size": 1024, '
                                         '"image_tokenizer": "patches"}')
    with pytest.raises(ValueError, match="transformer must be a file name inside the folder"):
      remdm_jax.load_model(folder)
  (folder / "maskgit.json").write_text('{"transformer": "m", "image_tokenizer": "patches"}')
  with pytest.raises(ValueError, match="maskgit.json: codebook_size must be an integer, got "
                                       "None"):
    remdm_jax.load_model(folder)


# The denoiser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  path = write(tmp_path_factory.mktemp("tiny") / "m", official_tree(seed=5))
  return maskgit_io.load_transformer(path)


def test_the_denoiser_draws_only_image_codes_and_can_replace_the_class(tiny):
  den = as_denoiser(tiny)
  assert (den.vocab_size, den.mask_id, den.reads_t) == (VOCAB, VOCAB - 1, False)
  z = image_prompt(tiny.cfg, jnp.asarray([0, 2]))
  assert z.tolist() == [[CODES] + [VOCAB - 1] * TOKENS, [CODES + 2] + [VOCAB - 1] * TOKENS]
  logits = den(z, jnp.ones((2,)))
  assert bool(jnp.all(jnp.isneginf(logits[..., CODES:])))
  np.testing.assert_allclose(logits[..., :CODES], tiny(z)[..., :CODES], rtol=1e-6)
  relabelled = as_denoiser(tiny, label=1)(z, jnp.ones((2,)))
  np.testing.assert_array_equal(relabelled[1], as_denoiser(tiny)(z.at[:, 0].set(CODES + 1),
                                                                 jnp.ones((2,)))[1])
  with pytest.raises(ValueError, match=r"label must be in \[0, 3\)"):
    as_denoiser(tiny, label=3)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    image_prompt(tiny.cfg, jnp.asarray([3]))
  guided = remdm_jax.classifier_free_guidance(den, as_denoiser(tiny, label=0), 2.0)
  mixed = guided(z, jnp.ones((2,)))
  assert bool(jnp.all(jnp.isfinite(mixed[..., :CODES])))
  assert bool(jnp.all(jnp.isneginf(mixed[..., CODES:])))


@pytest.mark.parametrize("config", [
    MaskGitDecoderConfig(num_steps=4),
    sampler_config("mdlm", num_steps=4, temperature=0.8),
    sampler_config("cap", eta=0.05, num_steps=4),
    pytest.param(sampler_config("rescale", eta=0.05, num_steps=4), marks=pytest.mark.slow),
    pytest.param(sampler_config("conf", num_steps=4), marks=pytest.mark.slow),
    pytest.param(sampler_config("loop", eta=0.05, num_steps=8), marks=pytest.mark.slow),
], ids=lambda c: getattr(c, "name", None) or c.strategy.name)
def test_every_decoder_samples_image_tokens_and_keeps_the_class(tiny, config):
  labels = jnp.asarray([0, 1, 2, 1])
  tokens = remdm_jax.sample(jax.random.key(0), as_denoiser(tiny), config, batch_size=4,
                            seq_len=TOKENS + 1, mask_id=VOCAB - 1,
                            prompt=image_prompt(tiny.cfg, labels))
  assert tokens.dtype == jnp.int32
  np.testing.assert_array_equal(tokens[:, 0], labels + CODES)
  assert bool(jnp.all((tokens[:, 1:] >= 0) & (tokens[:, 1:] < CODES)))


# MaskGIT's decoder --------------------------------------------------------------------------


def official_decode(logits_fn, inputs, steps, choice, rng, greedy, temperature=1.0):
  """A NumPy transcription of the official `parallel_decode.decode` (mask id -1), with the
  ReMDM fork's token temperature (the logits divided by it for the draw and the confidence):
  draws from the softmax (or its argmax), confidence log p + choice (1 - r) Gumbel, the cosine schedule
  in float32 (as the reference computes it: at T = 3, `floor(4 cos(pi / 3))` is 1, since the
  float32 cosine is 0.49999997), `floor(N0 gamma)` clipped to [1, masked - 1], masking below
  the cut-off, and the last step's draws as the output."""
  cur = inputs.copy()
  initial = (inputs == -1).sum(-1)
  for step in range(steps):
    logits = logits_fn(cur).astype(np.float64) / (1.0 if greedy else temperature)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if greedy:
      drawn = probs.argmax(-1)
    else:
      drawn = np.stack([[rng.choice(probs.shape[-1], p=row) for row in seq] for seq in probs])
    unknown = cur == -1
    drawn = np.where(unknown, drawn, cur)
    inside = np.minimum(drawn, probs.shape[-1] - 1)       # the class token is never read
    chosen = np.where(unknown, np.take_along_axis(probs, inside[..., None], -1)[..., 0], np.inf)
    ratio = np.float32(step + 1) / np.float32(steps)      # float32, as the reference's jnp
    gamma = np.clip(np.cos(np.float32(math.pi / 2) * ratio), np.float32(1e-6), np.float32(1))
    mask_len = np.floor(initial.astype(np.float32) * gamma)
    mask_len = np.maximum(1, np.minimum(unknown.sum(-1) - 1, mask_len)).astype(int)
    confidence = np.log(chosen) + choice * (1 - ratio) * rng.gumbel(size=chosen.shape)
    cut = np.take_along_axis(np.sort(confidence, -1), mask_len[:, None], -1)
    cur = np.where(confidence < cut, -1, drawn)
  return drawn


def test_maskgit_decoding_at_temperature_0_is_the_official_algorithms(tiny):
  labels = np.asarray([0, 1, 2, 0, 1, 2])
  inputs = np.concatenate([labels[:, None] + CODES, -np.ones((6, TOKENS), int)], 1)
  fn = lambda seq: np.asarray(tiny(jnp.asarray(seq, jnp.int32)))[..., :CODES]
  for steps in (2, 3, 4):
    expected = official_decode(fn, inputs, steps, 0.0, np.random.default_rng(0), True)
    got = remdm_jax.sample(jax.random.key(0), as_denoiser(tiny),
                           MaskGitDecoderConfig(num_steps=steps, choice_temperature=0.0,
                                                temperature=0.0),
                           batch_size=6, seq_len=TOKENS + 1, mask_id=VOCAB - 1,
                           prompt=image_prompt(tiny.cfg, labels))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("temperature", [1.0, pytest.param(1.5, marks=pytest.mark.slow)])
def test_maskgit_decoding_matches_the_official_algorithm_in_distribution(tmp_path, temperature):
  """Codebook 3, 2 image tokens (9 outcomes), T = 2, choice temperature 4.5: 4,000 draws of
  each, two-sample chi-square test at fixed seeds (p > 0.001)."""
  tree = official_tree(seed=7, vocab=3 + 1 + 1, tokens=2, layers=1, scale=1.0)
  model = maskgit_io.load_transformer(write(tmp_path / "toy", tree), codebook_size=3)
  count = 4000
  inputs = np.tile(np.asarray([[3, -1, -1]]), (count, 1))
  fn = lambda seq: numpy_forward(tree, seq)[..., :3]
  expected = official_decode(fn, inputs, 2, 4.5, np.random.default_rng(0), False, temperature)
  got = np.asarray(remdm_jax.sample(
      jax.random.key(1), as_denoiser(model),
      MaskGitDecoderConfig(num_steps=2, temperature=temperature), batch_size=count,
      seq_len=3, mask_id=4, prompt=image_prompt(model.cfg, jnp.zeros(count, jnp.int32))))
  index = lambda rows: rows[:, 1] * 3 + rows[:, 2]
  table = np.stack([np.bincount(index(expected), minlength=9),
                    np.bincount(index(got), minlength=9)])
  table = table[:, table.sum(0) > 0]
  assert table.shape[1] >= 4          # the toy's outcomes are not all on one sequence
  assert stats.chi2_contingency(table)[1] > 1e-3


@pytest.mark.slow
def test_maskgit_decoding_does_not_depend_on_the_batch_split(tiny):
  config = MaskGitDecoderConfig(num_steps=3, temperature_annealing=True)
  labels = jnp.asarray([0, 1, 2, 0, 1, 2])
  prompt = image_prompt(tiny.cfg, labels)
  whole = remdm_jax.sample(jax.random.key(3), as_denoiser(tiny), config, batch_size=6,
                           seq_len=TOKENS + 1, mask_id=VOCAB - 1, prompt=prompt)
  halves = [remdm_jax.sample(jax.random.key(3), as_denoiser(tiny), config, batch_size=3,
                             seq_len=TOKENS + 1, mask_id=VOCAB - 1, prompt=prompt[s:s + 3],
                             first_index=s) for s in (0, 3)]
  np.testing.assert_array_equal(whole, np.concatenate(halves))


def test_mask_schedules_follow_their_formulas():
  r = (np.arange(8) + 1) / 8
  np.testing.assert_allclose(mask_ratios("cosine", 8), np.clip(np.cos(np.pi / 2 * r), 1e-6, 1),
                             atol=1e-7)
  np.testing.assert_allclose(mask_ratios("uniform", 8), np.clip(1 - r, 1e-6, 1), atol=1e-7)
  np.testing.assert_allclose(mask_ratios("pow2", 8), np.clip(1 - r ** 2, 1e-6, 1), atol=1e-7)


@pytest.mark.parametrize("options, message", [
    ({"num_steps": 0}, r"num_steps must be in \[1, inf\), got 0"),
    ({"schedule": "linear"}, "unknown schedule 'linear'; choose from"),
    ({"choice_temperature": -1.0}, r"choice_temperature must be in \[0, inf\), got -1.0"),
    ({"temperature": -0.5}, r"^temperature must be in \[0, inf\), got -0.5"),
])
def test_bad_decoder_options_are_refused(options, message):
  with pytest.raises(ValueError, match=message):
    MaskGitDecoderConfig(**options)


def test_the_plan_anneals_and_every_token_reports_its_log_probability(tiny):
  plan, rule = MaskGitDecoderConfig(num_steps=4, temperature=0.5, temperature_annealing=True,
                                    choice_temperature=2.0).build_plan()
  np.testing.assert_allclose(plan.temperatures, 0.5 * np.asarray([4, 3, 2, 1]) / 4)
  np.testing.assert_allclose(plan.noise_scales, 2.0 * (1 - np.arange(1, 5) / 4), atol=1e-7)
  # what the particle layer reads: each image token's log-probability exactly once, from the
  # step that kept it or (the last draws) from the finish
  from remdm_jax.sampling.decoder import Needs, RunShape
  from remdm_jax.sampling.step_rules import example_keys, row_step_keys
  prompt = image_prompt(tiny.cfg, jnp.asarray([0, 2]))
  scan = rule.start(as_denoiser(tiny), plan, prompt, RunShape(2, TOKENS + 1, VOCAB - 1),
                    Needs(logp=True))
  keys, carry = example_keys(jax.random.key(4), 0, 2), scan.carry
  decoded, logp = np.zeros((2, TOKENS + 1), int), np.zeros((2, TOKENS + 1))
  for j in range(4):
    carry, out = scan.step(carry, jnp.int32(j), row_step_keys(keys, j))
    decoded, logp = decoded + np.asarray(out.unmask), logp + np.asarray(out.logp)
  finish = scan.finish(carry)
  decoded, logp = decoded + np.asarray(finish.unmask), logp + np.asarray(finish.logp)
  np.testing.assert_array_equal(decoded[:, 1:], 1)
  assert np.asarray(finish.unmask).sum() >= 2 and np.all(logp[:, 1:] < 0)
  assert np.all(logp[:, 0] == 0)

"""Block decoding with every row at its own pace and slots refilled from a queue
(`remdm_jax.sampling.slots`): every prompt's tokens equal the lockstep decoder's for that
prompt alone at batch 1 (its independent reference: the lockstep decoder is checked against
ports of the reference decoders in test_blocks.py), for any slot count, on 1 and 8 devices;
the model calls of a queue; the job's contract."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import remdm_jax
from remdm_jax import cli
from remdm_jax.jobs import shards
from remdm_jax.models.llada import as_denoiser
from remdm_jax.sampling.slots import make_slot_decoder
from remdm_jax.validation import ArgumentTypeError
from remdm_jax.weights.llada_io import load_llada
from references.llada import MASK_ID, released_config, released_tensors, write_folder

LENGTH = 24
PROMPT_LENGTHS = (3, 9, 14, 6, 20, 1, 11, 17)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny random LLaDA (its mask logit row zeroed, as in test_blocks.py)."""
  config = released_config(max_sequence_length=64)
  tensors = released_tensors(config, seed=3)
  tensors["model.transformer.ff_out.weight"][MASK_ID] = 0.0
  folder = write_folder(tmp_path_factory.mktemp("slots") / "llada", config, tensors)
  return as_denoiser(load_llada(folder, dtype="float32"))


def prompt_rows(lengths, seed=0, length=LENGTH):
  rng = np.random.default_rng(seed)
  rows = np.full((len(lengths), length), MASK_ID, np.int32)
  for b, n in enumerate(lengths):
    rows[b, :n] = rng.integers(0, 37, n)
  return rows


def alone(denoiser, cfg, prompts, key=1):
  """Each prompt decoded by the lockstep decoder in a batch of one, with its index (one
  executable, compiled for the longest answer: a shorter one skips the extra blocks)."""
  sampler = remdm_jax.make_sampler(denoiser, cfg, batch_size=1, seq_len=prompts.shape[1],
                                   mask_id=MASK_ID)
  widest = int(np.argmin((prompts != MASK_ID).sum(axis=1)))
  sampler.compile(jax.random.key(key), prompt=prompts[widest:widest + 1])
  return np.stack([np.asarray(sampler(jax.random.key(key), prompt=prompts[i:i + 1],
                                      first_index=i))[0] for i in range(len(prompts))])


CONFIGS = {
    "threshold-dual": dict(threshold=0.3, kv_cache="dual"),
    "remdm-random": dict(temperature=1.0, remasking="random", remdm_number=1, remdm_start=2),
    "eos-prefix": dict(eos_id=5, threshold=0.2, kv_cache="prefix"),
    "sigma-cfg": dict(temperature=1.0, remask_sigma="rescale", eta=0.5, cfg_scale=1.0),
}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow)
    if name in ("eos-prefix", "sigma-cfg", "remdm-random") else name
    for name in CONFIGS])
def test_every_prompt_equals_its_decode_alone(tiny, name):
  """Threshold decoding and the dual cache, ReMDM-LLaDA with random remasking, EOS with the
  prefix cache, per-step remasking under classifier-free guidance: 1 and 3 slots (the queue
  refills them mid-block), synchronising with the host every 3 steps or never."""
  cfg = remdm_jax.sampler_config("llada", **({"num_steps": 4, "block_length": 4,
                                              "temperature": 0.0} | CONFIGS[name]))
  prompts = prompt_rows(PROMPT_LENGTHS)
  expected = alone(tiny, cfg, prompts)
  for slots, sync_every in ((1, 0), (3, 3)):
    got = make_slot_decoder(tiny, cfg, slots=slots, seq_len=LENGTH, mask_id=MASK_ID)(
        jax.random.key(1), prompts, sync_every=sync_every)
    np.testing.assert_array_equal(got.tokens, expected, err_msg=f"{name}, {slots} slots")
    assert not got.nonfinite.any() and (got.tokens != MASK_ID).all()


@pytest.mark.slow
def test_tokens_do_not_depend_on_the_slots_the_order_or_the_devices(tiny):
  """8 slots over 8 devices against 2 slots on one, the queue reversed (each prompt keeps its
  global index): the same tokens, every example at temperature 1 with EOS and the dual
  cache."""
  cfg = remdm_jax.sampler_config("llada", num_steps=4, block_length=4, temperature=1.0,
                                 threshold=0.3, kv_cache="dual", eos_id=5)
  prompts = prompt_rows(PROMPT_LENGTHS, seed=4)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  sharded = make_slot_decoder(tiny, cfg, slots=8, seq_len=LENGTH, mask_id=MASK_ID,
                              batch_sharding=NamedSharding(mesh, P("data")))
  got = sharded(jax.random.key(2), prompts, sync_every=2)
  order = np.arange(len(prompts))[::-1]
  reversed_run = make_slot_decoder(tiny, cfg, slots=2, seq_len=LENGTH, mask_id=MASK_ID)(
      jax.random.key(2), prompts[order], order)
  np.testing.assert_array_equal(got.tokens[order], reversed_run.tokens)
  np.testing.assert_array_equal(got.tokens[:2], alone(tiny, cfg, prompts[:2], key=2))


def count_calls(logits):
  """A constant denoiser `(z, t) -> logits` that counts its calls in a list."""
  calls = []

  def denoiser(z, t):
    jax.debug.callback(lambda: calls.append(1))
    return jnp.broadcast_to(logits, z.shape + logits.shape)

  return denoiser, calls


def test_model_calls_follow_the_rows_own_steps():
  """Answers of 5, 3 and 4 rows in blocks of 2, one token per step: 5 and 3 steps (a last
  block of one mask takes one of its two steps) and 4. Alone that is 12 calls; in 2 slots the
  third prompt takes the second slot after 3 steps, so the queue takes 7 calls, in 3 slots the
  longest prompt's 5. With the preferred id as EOS each answer ends with its first block (2
  steps): 4 calls in 2 slots."""
  logits = jnp.zeros(5, jnp.float32).at[1].set(1.0)
  denoiser, calls = count_calls(logits)
  prompts = np.array([[0, 4, 4, 4, 4, 4], [0, 2, 3, 4, 4, 4], [0, 2, 4, 4, 4, 4]], np.int32)
  cfg = remdm_jax.sampler_config("llada", num_steps=2, block_length=2, temperature=0.0)
  for slots, expected in ((1, 12), (2, 7), (3, 5)):
    calls.clear()
    out = make_slot_decoder(denoiser, cfg, slots=slots, seq_len=6, mask_id=4)(
        jax.random.key(0), prompts)
    jax.effects_barrier()
    assert out.model_calls == len(calls) == out.iterations == expected, slots
  eos = make_slot_decoder(denoiser, cfg.with_options(eos_id=1), slots=2, seq_len=6,
                          mask_id=4)(jax.random.key(0), prompts)
  assert eos.model_calls == 4 and eos.tokens[0].tolist() == [0, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("kv_cache,fused", [
    ("none", True), pytest.param("dual", True, marks=pytest.mark.slow),
    pytest.param("dual", False, marks=pytest.mark.slow)])
def test_slots_stay_busy_on_mixed_lengths(tiny, kv_cache, fused):
  """48 prompts of 1 to 20 ids, threshold 0.9: at 8 slots the queue makes at most 1.3 x (the
  calls of one prompt at a time) / 8. With the dual cache, rows starting a block are
  prefilled in the same call as the others' windows (LLaDA's fused pass); a denoiser without
  it calls twice in such a step, so only its steps stay within the bound."""
  denoiser = tiny if fused else dataclasses.replace(tiny, prefill_and_cached_apply=None)
  prompts = prompt_rows(np.random.default_rng(5).integers(1, 21, 48), seed=6)
  cfg = remdm_jax.sampler_config("llada", num_steps=4, block_length=4, temperature=0.0,
                                 threshold=0.9, kv_cache=kv_cache)
  one = make_slot_decoder(denoiser, cfg, slots=1, seq_len=LENGTH, mask_id=MASK_ID)(
      jax.random.key(0), prompts)
  eight = make_slot_decoder(denoiser, cfg, slots=8, seq_len=LENGTH, mask_id=MASK_ID)(
      jax.random.key(0), prompts)
  np.testing.assert_array_equal(one.tokens, eight.tokens)
  bound = 1.3 * one.model_calls / 8
  assert eight.iterations <= bound, (eight.iterations, one.model_calls)
  assert (eight.model_calls <= bound) == fused, (eight.model_calls, one.model_calls)


def test_the_fused_pass_equals_the_two_calls(tiny):
  """LLaDA's prefill of some rows and cached window of others in one pass over the layers
  gives the two calls' hidden states and cache, to float32 rounding (the same rounding a
  change of batch size gives: the matrix products see other shapes)."""
  z = prompt_rows([3, 7, 12], seed=2)
  cache, z_p = tiny.prefill(z)[1], prompt_rows([5, 9], seed=3)
  positions = jnp.asarray([[4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]], jnp.int32)
  fresh = positions < jnp.asarray([[6], [11], [16]])
  z_w = jnp.take_along_axis(jnp.asarray(z), positions, axis=1)
  fused = tiny.prefill_and_cached(z_p, z_w, positions, fresh, cache)
  apart = tiny.prefill(z_p), tiny.cached(z_w, positions, fresh, cache)
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(apart)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named(tiny):
  cfg = remdm_jax.sampler_config("llada", num_steps=2, block_length=4)
  with pytest.raises(ArgumentTypeError, match="config must be a BlockConfig"):
    make_slot_decoder(tiny, remdm_jax.SamplerConfig(), slots=2, seq_len=8, mask_id=MASK_ID)
  with pytest.raises(ValueError, match="slots must be"):
    make_slot_decoder(tiny, cfg, slots=0, seq_len=8, mask_id=MASK_ID)
  run = make_slot_decoder(tiny, cfg, slots=2, seq_len=8, mask_id=MASK_ID)
  with pytest.raises(ValueError, match=r"prompts must have shape \[N, seq_len\]"):
    run(jax.random.key(0), np.zeros((3, 9), np.int32))
  with pytest.raises(ValueError, match=r"indices must be \[N\] = \[2\]"):
    run(jax.random.key(0), prompt_rows([2, 3], length=8), [0, -1])
  inner = prompt_rows([4], length=8)
  inner[0, 1] = MASK_ID
  with pytest.raises(ValueError, match="prompt row 0 has the mask id at position 1"):
    run(jax.random.key(0), inner)
  with pytest.raises(ValueError, match="sync_every must be"):
    run(jax.random.key(0), prompt_rows([2], length=8), sync_every=-1)


@pytest.fixture(scope="module")
def job_folder(tmp_path_factory):
  """A released-layout LLaDA folder with a tokenizer, and a file of 9 prompts of mixed
  lengths."""
  from references.folders import write_tokenizer_folder
  folder = tmp_path_factory.mktemp("slot-job")
  model = folder / "llada"
  model.mkdir()
  write_tokenizer_folder(model)
  config = released_config(embedding_size=320, vocab_size=300, mask_token_id=286,
                           eos_token_id=285, pad_token_id=285, max_sequence_length=32)
  write_folder(model, config, released_tensors(config))
  words = np.random.default_rng(0).choice(["the", "of", "and", "to", "in", "is"], 60)
  lengths = np.random.default_rng(1).integers(1, 10, 9)
  lines = [" ".join(words[i:i + n]) for i, n in enumerate(lengths)]
  (folder / "prompts.txt").write_text("\n".join(lines) + "\n")
  return model, folder / "prompts.txt"


@pytest.mark.slow
def test_a_job_writes_the_same_records_for_any_batch_size(job_folder, tmp_path, capsys):
  """The contract: `remdm-sample` with the llada strategy writes one record per prompt, its ids
  independent of `--job.batch_size` (1, 3 and 8 slots; threshold decoding, dual cache); the
  closing throughput line carries the model calls; a rerun after a lost shard recomputes only
  that shard's prompts."""
  model, prompts = job_folder
  ids = {}
  for batch_size in (1, 3, 8):
    out = tmp_path / f"job{batch_size}"
    argv = [f"--job.model={model}", f"--job.prompt_file={prompts}", "--job.num_samples=9",
            f"--job.batch_size={batch_size}", f"--job.out={out}", "--job.quiet=true",
            "--sampler.strategy=llada", "--sampler.block_length=8", "--sampler.num_steps=4",
            "--sampler.threshold=0.9", "--sampler.kv_cache=dual", "--sampler.temperature=0"]
    assert cli.sample_main(argv) == 0
    line = [l for l in capsys.readouterr().err.splitlines() if l.startswith("throughput:")][-1]
    assert json.loads(line.split(":", 1)[1])["model_calls"] > 0
    records = shards.merge(out)
    assert [r["index"] for r in records] == list(range(9))
    ids[batch_size] = [r["ids"] for r in records]
  assert ids[1] == ids[3] == ids[8]
  lost = shards.shard_path(out, *shards.finished_shards(out)[0])
  lost.unlink()
  assert cli.sample_main(argv) == 0
  assert [r["ids"] for r in shards.merge(out)] == ids[8]

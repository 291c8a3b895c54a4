"""Block decoding (strategy "llada") against line-by-line float64 NumPy ports of the reference
decoders at temperature 0: ML-GSAI/LLaDA `generate`, NVlabs/Fast-dLLM's threshold rule and
`generate_with_prefix_cache` / `generate_with_dual_cache`, and ReMDM-LLaDA's
`llada_remdm_sample` (guanghanwang/ReMDM-LLaDA `eval_llada.py`), on a tiny random LLaDA whose
forward is an independent NumPy computation (with an explicit key-value override for the
caches). The library decodes a batch of prompts of different lengths in one call; the ports
run one prompt at a time, as the references do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import remdm_jax
from remdm_jax.models.llada import as_denoiser
from remdm_jax.weights.llada_io import load_llada
from references.llada import MASK_ID, np_forward, released_config, released_tensors, write_folder

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(config, float64 tensors, denoiser): the mask's output row is zero, so its logit is 0
  and never the argmax (the references decode the mask id when it is; the library never
  does); the softmax still counts it in both."""
  config = released_config(max_sequence_length=64)
  tensors = released_tensors(config, seed=3)
  tensors["model.transformer.ff_out.weight"][MASK_ID] = 0.0
  folder = tmp_path_factory.mktemp("blocks") / "llada"
  write_folder(folder, config, tensors)
  return config, tensors, as_denoiser(load_llada(folder, dtype="float32"))


def softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def transfer_counts(masked: int, steps: int) -> np.ndarray:
  """LLaDA's `get_num_transfer_tokens` for one sequence."""
  counts = np.full(steps, masked // steps)
  counts[:masked % steps] += 1
  return counts


def choose(x, logits, mask_index, count, threshold=None):
  """Fast-dLLM's `get_transfer_index` at temperature 0 with `low_confidence` (LLaDA's step
  for `threshold=None`): top-`count` confidence among masked rows, or with a threshold the
  top one and every other at least that confident. Returns the new x."""
  x0 = np.argmax(logits, -1)
  confidence = np.where(mask_index, np.take_along_axis(softmax(logits), x0[:, None], 1)[:, 0],
                        -np.inf)
  order = np.argsort(-confidence, kind="stable")
  if threshold is None:
    chosen = order[:count]
  else:
    chosen = [order[0]] + [i for i in order[1:mask_index.sum()]
                           if confidence[i] >= threshold]
  x = x.copy()
  x[chosen] = x0[chosen]
  return x


def reference_generate(forward, prompt, *, steps, gen_length, block_length, cfg_scale=0.0,
                       threshold=None):
  """ML-GSAI/LLaDA `generate` (with Fast-dLLM's threshold rule), temperature 0, one row."""
  x = np.concatenate([prompt, np.full(gen_length, MASK_ID)])
  prompt_index, length = x != MASK_ID, len(x)
  per_block = steps // (gen_length // block_length)
  for block in range(gen_length // block_length):
    lo, hi = len(prompt) + block * block_length, len(prompt) + (block + 1) * block_length
    counts = transfer_counts(int((x[lo:hi] == MASK_ID).sum()), per_block)
    i = 0
    while (x[lo:hi] == MASK_ID).any():
      logits = forward(x, np.arange(length))[0]
      if cfg_scale > 0:
        un = forward(np.where(prompt_index, MASK_ID, x), np.arange(length))[0]
        logits = un + (cfg_scale + 1) * (logits - un)
      mask_index = (x == MASK_ID) & (np.arange(length) < hi)
      x = choose(x, logits, mask_index, counts[i], threshold)
      i += 1
  return x


def reference_cached(forward, prompt, *, steps, gen_length, block_length, dual,
                     threshold=None):
  """Fast-dLLM `generate_with_prefix_cache` (dual=False) / `generate_with_dual_cache`,
  temperature 0, one row: a full forward at each block's start gives its first step and the
  cache; later steps run `[lo, L)` with the prefix cached, or `[lo, hi)` with all else
  cached."""
  x = np.concatenate([prompt, np.full(gen_length, MASK_ID)])
  length = len(x)
  per_block = steps // (gen_length // block_length)
  for block in range(gen_length // block_length):
    lo, hi = len(prompt) + block * block_length, len(prompt) + (block + 1) * block_length
    counts = transfer_counts(int((x[lo:hi] == MASK_ID).sum()), per_block)
    logits, cache = forward(x, np.arange(length))
    x = choose(x, logits, (x == MASK_ID) & (np.arange(length) < hi), counts[0], threshold)
    i = 1
    while (x[lo:hi] == MASK_ID).any():
      end = hi if dual else length
      rows = np.arange(lo, end)
      logits = forward(x[lo:end], rows, cache, np.ones(len(rows), bool))[0]
      part = choose(x[lo:end], logits, (x[lo:end] == MASK_ID) & (rows < hi), counts[i],
                    threshold)
      x = np.concatenate([x[:lo], part, x[end:]])
      i += 1
  return x


def reference_remdm(forward, prompt, *, steps, gen_length, block_length, remdm_number):
  """ReMDM-LLaDA `llada_remdm_sample` at temperature 0 (argmax of the float64 softmax in
  place of its Gumbel draw), one row, with its `conf_cache` bookkeeping."""
  x = np.concatenate([prompt, np.full(gen_length, MASK_ID)])
  length, prompt_len = len(x), len(prompt)
  per_block = steps // (gen_length // block_length)
  for block in range(gen_length // block_length):
    conf_cache = np.full(length, np.inf)
    start = int(block_length / 8 * 7)
    for i in range(2 * per_block):
      window = start <= i < start + per_block
      if window:
        lowest = np.argsort(conf_cache, kind="stable")[:remdm_number]
        conf_cache[lowest] = np.inf
        x[lowest] = MASK_ID
      mask_index = x == MASK_ID
      p = softmax(forward(x, np.arange(length))[0])
      x0 = np.argmax(p, -1)
      x0_p = np.take_along_axis(p, x0[:, None], 1)[:, 0]
      x0_p[prompt_len + (block + 1) * block_length:] = -np.inf
      confidence = np.where(mask_index, x0_p, -np.inf)
      k = remdm_number if window else gen_length // steps
      chosen = np.argsort(-confidence, kind="stable")[:k]
      x[chosen] = np.where(mask_index, x0, x)[chosen]
      conf_cache[chosen] = confidence[chosen]
  return x


def batch_rows(prompts, length):
  rows = np.full((len(prompts), length), MASK_ID, np.int32)
  for b, p in enumerate(prompts):
    rows[b, :len(p)] = p
  return rows


def prompts_of(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 37, n) for n in lengths]


def library(denoiser, prompts, length, **options):
  cfg = remdm_jax.sampler_config("llada", temperature=0.0, **options)
  return np.asarray(remdm_jax.sample(jax.random.key(0), denoiser, cfg,
                                     batch_size=len(prompts), seq_len=length, mask_id=MASK_ID,
                                     prompt=batch_rows(prompts, length)))


@pytest.mark.parametrize("block_length,steps,options", [
    (16, 16, {}),                     # one block, one token per step
    (4, 2, {}),                       # several blocks, two tokens per step
    (4, 3, {}),                       # a remainder spread over the first steps
    (4, 2, {"cfg_scale": 1.0}),
    (4, 4, {"threshold": 0.3}),
])
def test_matches_llada_generate(tiny, block_length, steps, options):
  _compare_rows(tiny, reference_generate, block_length, steps, **options)


@pytest.mark.parametrize("kv_cache,threshold", [("prefix", None), ("dual", None),
                                                ("dual", 0.3)])
def test_matches_fast_dllm_caches(tiny, kv_cache, threshold):
  reference = lambda *a, **k: reference_cached(*a, dual=kv_cache == "dual", **k)
  options = {"kv_cache": kv_cache} | ({"threshold": threshold} if threshold else {})
  _compare_rows(tiny, reference, 4, 4, **options)


@pytest.mark.parametrize("remdm_number", [1, 2])
def test_matches_remdm_llada(tiny, remdm_number):
  _compare_rows(tiny, reference_remdm, 8, 8, remdm_number=remdm_number)


def _compare_rows(tiny, reference, block_length, steps_per_block, **options):
  """Prompt lengths chosen so every row's answer is whole blocks: P = L - n * K."""
  config, tensors, denoiser = tiny
  forward = lambda *a: np_forward(config, tensors, *a)
  length = 24
  answers = [length - 3 - (length - 3) % block_length]
  answers += [answers[0] - block_length] if answers[0] > block_length else []
  prompts = prompts_of([length - g for g in answers] + [length - answers[0]], seed=1)
  reference_options = {k: v for k, v in options.items()
                       if k in ("cfg_scale", "threshold", "remdm_number")}
  ours = library(denoiser, prompts, length, block_length=block_length,
                 num_steps=steps_per_block, **options)
  for b, prompt in enumerate(prompts):
    gen = length - len(prompt)
    expected = reference(forward, prompt, steps=steps_per_block * gen // block_length,
                         gen_length=gen, block_length=block_length, **reference_options)
    np.testing.assert_array_equal(ours[b], expected, err_msg=f"row {b}, {options}")


def constant_denoiser(logits, calls=None):
  """Every position gets the same logits `[V]`; `calls`, a list, counts the model calls."""
  logits = jnp.asarray(logits, jnp.float32)

  def denoiser(z, t):
    if calls is not None:
      jax.debug.callback(lambda: calls.append(1))
    return jnp.broadcast_to(logits, z.shape + logits.shape)
  return denoiser


def test_temperature_draws_the_tempered_distribution():
  """4000 one-token answers at temperature 0.7: the frequencies are softmax(l / 0.7) over
  the ids but the mask, within 4.5 standard errors (seed fixed); temperature 0 is argmax."""
  logits, mask, batch = np.array([1.0, 0.2, -0.5, 0.4, 3.0]), 4, 4000
  cfg = remdm_jax.sampler_config("llada", num_steps=1, block_length=1, temperature=0.7)
  out = remdm_jax.sample(jax.random.key(5), constant_denoiser(logits), cfg, batch_size=batch,
                         seq_len=1, mask_id=mask)
  expected = softmax(logits[:4] / 0.7)
  frequency = np.bincount(np.asarray(out)[:, 0], minlength=5)[:4] / batch
  np.testing.assert_array_less(np.abs(frequency - expected),
                               4.5 * np.sqrt(expected * (1 - expected) / batch))
  greedy = remdm_jax.sample(jax.random.key(5), constant_denoiser(logits),
                            cfg.with_options(temperature=0.0), batch_size=3, seq_len=2,
                            mask_id=mask)
  assert (np.asarray(greedy) == 0).all()


def test_random_remasking_picks_positions_uniformly():
  """With `remasking="random"` the first position decoded of a 4-position block is uniform
  (2000 examples, 4.5 standard errors); with `low_confidence` on equal confidences it is the
  first position (stable ranking)."""
  cfg = remdm_jax.sampler_config("llada", num_steps=4, block_length=4, temperature=0.0,
                                 remasking="random")
  trajectory = remdm_jax.sample(jax.random.key(2), constant_denoiser([1.0, 0.0, 5.0]), cfg,
                                batch_size=2000, seq_len=4, mask_id=2, return_trajectory=True)
  first = np.argmax(np.asarray(trajectory.unmasked[0]), axis=-1)
  frequency = np.bincount(first, minlength=4) / 2000
  np.testing.assert_array_less(np.abs(frequency - 0.25), 4.5 * np.sqrt(0.25 * 0.75 / 2000))
  ordered = remdm_jax.sample(jax.random.key(2), constant_denoiser([1.0, 0.0, 5.0]),
                             cfg.with_options(remasking="low_confidence"), batch_size=1,
                             seq_len=4, mask_id=2, return_trajectory=True)
  assert np.asarray(ordered.unmasked)[:, 0].argmax(-1).tolist() == [0, 1, 2, 3]


def test_eos_stops_an_example_and_the_model_calls():
  """Position 5 prefers EOS (id 2): after the first block [2, 6) the answer ends, every later
  position is EOS and no later step calls the model (2 calls instead of 8)."""
  def denoiser(z, t):
    jax.debug.callback(lambda: calls.append(1))
    logits = jnp.zeros(z.shape + (4,), jnp.float32).at[..., 1].set(1.0)
    return logits.at[:, 5, 2].set(5.0)

  calls = []
  prompt = np.full((1, 16), 3, np.int32)
  prompt[0, :2] = [0, 1]
  cfg = remdm_jax.sampler_config("llada", num_steps=2, block_length=4, temperature=0.0,
                                 eos_id=2)
  out = np.asarray(remdm_jax.sample(jax.random.key(0), denoiser, cfg, batch_size=1,
                                    seq_len=16, mask_id=3, prompt=prompt))
  jax.effects_barrier()
  assert out[0].tolist() == [0, 1, 1, 1, 1] + [2] * 11
  assert len(calls) == 2
  calls.clear()
  remdm_jax.sample(jax.random.key(0), denoiser, cfg.with_options(eos_id=-1), batch_size=1,
                   seq_len=16, mask_id=3, prompt=prompt).block_until_ready()
  jax.effects_barrier()
  assert len(calls) == 8


def test_rows_do_not_depend_on_the_batch(tiny):
  """At temperature 1 with random remasking and ReMDM-LLaDA steps, a row decoded alone (with
  its global index) equals that row of a batch whose other prompts differ in length."""
  denoiser = tiny[2]
  prompts = prompts_of([4, 9, 6], seed=7)
  cfg = remdm_jax.sampler_config("llada", num_steps=4, block_length=4, temperature=1.0,
                                 remasking="random", remdm_number=1, remdm_start=2)
  batch = remdm_jax.sample(jax.random.key(1), denoiser, cfg, batch_size=3, seq_len=20,
                           mask_id=MASK_ID, prompt=batch_rows(prompts, 20))
  alone = remdm_jax.sample(jax.random.key(1), denoiser, cfg, batch_size=1, seq_len=20,
                           mask_id=MASK_ID, prompt=batch_rows(prompts[1:2], 20),
                           first_index=1)
  np.testing.assert_array_equal(np.asarray(batch)[1], np.asarray(alone)[0])
  assert not (np.asarray(batch) == MASK_ID).any()


def test_trajectory_records_blocks_and_remasking(tiny):
  """Blocks x (num_steps + remasking steps) records; each block's positions are unmasked
  inside its own steps; remasking happens only in the remasking steps, one token each."""
  denoiser = tiny[2]
  cfg = remdm_jax.sampler_config("llada", num_steps=4, block_length=4, temperature=0.0,
                                 remdm_number=1, remdm_start=2, remdm_steps=3)
  prompt = batch_rows(prompts_of([8]), 16)
  trajectory = remdm_jax.sample(jax.random.key(0), denoiser, cfg, batch_size=1, seq_len=16,
                                mask_id=MASK_ID, prompt=prompt, return_trajectory=True)
  steps = np.asarray(trajectory.steps)
  assert steps.shape == (2 * 7, 1, 16)
  remasked = np.asarray(trajectory.remasked)[:, 0].sum(-1)
  assert remasked.tolist() == [0, 0, 1, 1, 1, 0, 0] * 2
  unmasked = np.asarray(trajectory.unmasked)[:, 0]
  assert unmasked[:7, 8:12].any(0).all() and not unmasked[:7, 12:].any()
  assert unmasked[7:, 12:].any(0).all() and not unmasked[7:, :12].any()
  np.testing.assert_array_equal(steps[-1], np.asarray(trajectory.tokens))
  assert np.asarray(trajectory.t).tolist() == [1.0, 0.75, 0.5, 0.5, 0.5, 0.5, 0.25] * 2


def test_compiled_sampler_reuses_or_grows_its_blocks(tiny):
  """A sampler compiled for one prompt runs shorter tails with its executable (empty blocks
  are skipped) and longer ones with a new one; tokens equal `sample`'s."""
  denoiser = tiny[2]
  cfg = remdm_jax.sampler_config("llada", num_steps=2, block_length=4, temperature=0.0)
  sampler = remdm_jax.make_sampler(denoiser, cfg, batch_size=2, seq_len=16, mask_id=MASK_ID)
  long_prompt = batch_rows(prompts_of([10, 12]), 16)
  assert sampler.num_steps(long_prompt) == 2 * 2              # tail 6: two blocks of 4
  sampler.compile(jax.random.key(0), prompt=long_prompt)
  assert sampler.num_steps() == 4                               # the compiled run's
  assert sampler.num_steps(batch_rows(prompts_of([13, 12]), 16)) == 4   # the compiled run's
  assert sampler.num_steps(batch_rows(prompts_of([2, 12]), 16)) == 4 * 2
  for prompt in (batch_rows(prompts_of([13, 12]), 16), batch_rows(prompts_of([2, 12]), 16)):
    expected = remdm_jax.sample(jax.random.key(0), denoiser, cfg, batch_size=2, seq_len=16,
                                mask_id=MASK_ID, prompt=prompt)
    np.testing.assert_array_equal(sampler(jax.random.key(0), prompt=prompt), expected)


def test_time_reading_denoiser_sees_the_masked_share():
  """A denoiser that reads t (the DiT) sees the masked share of each row: a denoiser that
  writes round(8 t) as its token shows it."""
  def denoiser(z, t):
    token = jnp.round(8 * t).astype(jnp.int32)                          # [B]
    return jax.nn.one_hot(jnp.broadcast_to(token[:, None], z.shape), 10) * 10.0

  cfg = remdm_jax.sampler_config("llada", num_steps=4, block_length=4, temperature=0.0)
  prompt = np.full((1, 8), 9, np.int32)
  prompt[0, :4] = 0
  out = np.asarray(remdm_jax.sample(jax.random.key(0), denoiser, cfg, batch_size=1, seq_len=8,
                                    mask_id=9, prompt=prompt))
  assert out[0, 4:].tolist() == [4, 3, 2, 1]      # 4, 3, 2, 1 of 8 masked at each step


def test_kv_cache_without_the_contract_warns_and_runs_uncached():
  cfg = remdm_jax.sampler_config("llada", num_steps=2, block_length=2, temperature=0.0)
  plain = remdm_jax.sample(jax.random.key(0), constant_denoiser([0.0, 1.0, 0.0]), cfg,
                           batch_size=1, seq_len=4, mask_id=2)
  with pytest.warns(UserWarning, match="no key-value cache contract"):
    cached = remdm_jax.sample(jax.random.key(0), constant_denoiser([0.0, 1.0, 0.0]),
                              cfg.with_options(kv_cache="dual"), batch_size=1, seq_len=4,
                              mask_id=2)
  np.testing.assert_array_equal(plain, cached)


def test_block_plan_sweeps_temperature_without_recompiling(tiny):
  """A plan of another temperature (above 0) runs in the same sampler; a plan of another
  static setting is refused, naming it."""
  denoiser = tiny[2]
  cfg = remdm_jax.sampler_config("llada", num_steps=2, block_length=4, temperature=1.0)
  sampler = remdm_jax.make_sampler(denoiser, cfg, batch_size=1, seq_len=8, mask_id=MASK_ID)
  hot, _ = remdm_jax.build_plan(cfg.with_options(temperature=5.0))
  expected = remdm_jax.sample(jax.random.key(0), denoiser, cfg.with_options(temperature=5.0),
                              batch_size=1, seq_len=8, mask_id=MASK_ID)
  np.testing.assert_array_equal(sampler(jax.random.key(0), plan=hot), expected)
  other, _ = remdm_jax.build_plan(cfg.with_options(kv_cache="dual"))
  with pytest.raises(ValueError, match="kv_cache: 'none' -> 'dual'"):
    sampler(jax.random.key(0), plan=other)


@pytest.mark.parametrize("remask_sigma,eta", [("cap", 0.3), ("rescale", 0.5), ("conf", 0.0)])
def test_remdm_sigma_inside_blocks_remasks_at_its_rate(remask_sigma, eta):
  """Regular step r of S = 8 (one position each) is the MDLM step from t = 1 - r/8 of the
  linear schedule: the r tokens decoded in the block are each remasked with probability
  sigma_r (cap: min(eta, sigma_max); rescale: eta sigma_max; conf: sigma_max split by the
  softmax of equal confidences, so sigma_max in all), sigma_max = min(1, (7 - r) / r). The
  mean remasked count over 600 examples is within 4.5 standard errors of r sigma_r, the step
  decodes one more than it remasked, and no mask is left."""
  batch, steps = 600, 8
  cfg = remdm_jax.sampler_config("llada", num_steps=steps, block_length=steps,
                                 temperature=1.0, remask_sigma=remask_sigma, eta=eta)
  trajectory = remdm_jax.sample(jax.random.key(3), constant_denoiser([0.0, 0.0, 0.0, 0.0]),
                                cfg, batch_size=batch, seq_len=steps, mask_id=3,
                                return_trajectory=True)
  remasked = np.asarray(trajectory.remasked).sum(-1)                   # [S, B]
  unmasked = np.asarray(trajectory.unmasked).sum(-1)
  r = np.arange(1, steps)
  smax = np.minimum(1.0, (steps - 1 - r) / r)
  p = {"cap": np.minimum(eta, smax), "rescale": eta * smax, "conf": smax / r}[remask_sigma]
  mean, sd = r * p, np.sqrt(r * p * (1 - p))
  assert (remasked[0] == 0).all()
  np.testing.assert_array_less(np.abs(remasked[1:].mean(1) - mean),
                               4.5 * sd / np.sqrt(batch) + 1e-9)
  np.testing.assert_array_equal(unmasked[:-1], remasked[:-1] + 1)
  assert not (np.asarray(trajectory.tokens) == 3).any()

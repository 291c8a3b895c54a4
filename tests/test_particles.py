"""Particles in the compiled sampler (`remdm_jax.particles`): one particle is the plain decode
(diffusion steps and block decoding with the dual cache), tokens do not depend on the batch
split or the device count, resampling draws each particle as often as its weight says
(statistical tests, fixed keys), the self-rewarding weight is the log-probability of the
decoded tokens (exact, on a product model), and on a product model whose tilted target
`p(x) exp(r(x))` is enumerated exactly, reward SMC's weighted particles approach it as the
number of particles grows."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import remdm_jax
from remdm_jax.models.llada import as_denoiser
from remdm_jax.particles import BestOfN, ParticleGibbs, Smc, effective_size, resample
from remdm_jax.sampling.particle_scan import gather_rows
from remdm_jax.weights.llada_io import load_llada
from references.llada import MASK_ID, released_config, released_tensors, write_folder

V, MASK, L = 4, 3, 3                       # ids 0..2, the mask 3
LOGITS = np.array([[1.0, 0.2, -0.6, 0.0],  # position-wise logits (the mask column is ignored)
                   [0.1, 0.8, 0.0, 0.0],
                   [-0.3, 0.4, 0.5, 0.0]], np.float32)
Q = np.exp(LOGITS[:, :3]) / np.exp(LOGITS[:, :3]).sum(-1, keepdims=True)   # [L, 3]


def product(z, t):
  """A denoiser whose samples are exactly the product of `Q`'s rows."""
  return jnp.broadcast_to(jnp.asarray(LOGITS), z.shape + (V,))


def all_equal(x):
  """Reward 3 when every position holds the same id (masks never count)."""
  return 3.0 * jnp.all((x == x[:, :1]) & (x != MASK), axis=-1).astype(jnp.float32)


MDLM = remdm_jax.SamplerConfig(num_steps=8)


def run(cfg, denoiser, batch, particles, *, key=0, seq_len=L, mask_id=MASK, **options):
  return remdm_jax.sample(jax.random.key(key), denoiser, cfg, batch_size=batch,
                          seq_len=seq_len, mask_id=mask_id, particles=particles, **options)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny random LLaDA (with the key-value cache contract)."""
  config = released_config(max_sequence_length=32)
  folder = tmp_path_factory.mktemp("particles") / "llada"
  write_folder(folder, config, released_tensors(config, seed=5))
  return as_denoiser(load_llada(folder, dtype="float32"))


def llada_prompt(batch, length=16, seed=0):
  rng = np.random.default_rng(seed)
  rows = np.full((batch, length), MASK_ID, np.int32)
  for b in range(batch):
    rows[b, :3 + b % 3] = rng.integers(0, 37, 3 + b % 3)
  return rows


@pytest.mark.parametrize("cfg", [
    remdm_jax.sampler_config(strategy="cap", num_steps=8, eta=0.2, temperature=0.8),
    remdm_jax.sampler_config(strategy="topk", num_steps=6, temperature=0.8),
], ids=["cap", "topk"])
@pytest.mark.parametrize("method", [Smc(1), BestOfN(1), Smc(1, reward=all_equal)],
                         ids=["smc", "best_of_n", "reward_smc"])
def test_one_particle_is_the_plain_decode(cfg, method):
  plain = run(cfg, product, 5, None, key=3)
  np.testing.assert_array_equal(run(cfg, product, 5, method, key=3), plain)


@pytest.mark.parametrize("method", [pytest.param(Smc(1, every=1), marks=pytest.mark.slow),
                                    BestOfN(1)], ids=["smc", "best_of_n"])
def test_one_particle_is_the_plain_block_decode_with_the_dual_cache(tiny, method):
  cfg = remdm_jax.sampler_config("llada", block_length=4, num_steps=2, temperature=1.0,
                                 kv_cache="dual")
  prompt = llada_prompt(3)
  plain = run(cfg, tiny, 3, None, seq_len=16, mask_id=MASK_ID, prompt=prompt)
  np.testing.assert_array_equal(
      run(cfg, tiny, 3, method, seq_len=16, mask_id=MASK_ID, prompt=prompt), plain)


@pytest.mark.slow
def test_block_particles_do_not_depend_on_the_batch_and_resample_the_cache(tiny):
  """Four particles resampled at every step (the dual cache gathered with them): a row decoded
  alone equals its row of the batch, and the particles differ."""
  cfg = remdm_jax.sampler_config("llada", block_length=4, num_steps=2, temperature=1.0,
                                 kv_cache="dual")
  method = Smc(4, every=1, ess_threshold=1.0)
  prompt = llada_prompt(3, seed=2)
  batch = run(cfg, tiny, 3, method, seq_len=16, mask_id=MASK_ID, prompt=prompt,
              return_particles=True)
  alone = run(cfg, tiny, 1, method, seq_len=16, mask_id=MASK_ID, prompt=prompt[2:3],
              first_index=2, return_particles=True)
  np.testing.assert_array_equal(batch.particles[2], alone.particles[0])
  assert len({tuple(p) for p in np.asarray(batch.particles[0])}) > 1
  assert not (np.asarray(batch.tokens) == MASK_ID).any()


def test_tokens_do_not_depend_on_the_split_or_the_devices():
  cfg = remdm_jax.sampler_config(strategy="cap", num_steps=8, eta=0.2)
  method = Smc(3, reward=all_equal, resampler="systematic", every=2)

  def call(batch, first, sharding=None):
    return run(cfg, product, batch, method, key=4, first_index=first,
               batch_sharding=sharding)

  whole = call(16, 0)
  np.testing.assert_array_equal(whole, np.concatenate([call(8, 0), call(8, 8)]))
  sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
  sharded = jax.jit(lambda: call(16, 0, sharding), out_shardings=sharding)()
  assert len({s.device for s in sharded.addressable_shards}) == len(jax.devices()) == 8
  np.testing.assert_array_equal(whole, sharded)


@pytest.mark.parametrize("resampler", ["multinomial", "systematic"])
def test_resampling_draws_each_particle_in_proportion_to_its_weight(resampler):
  """20,000 resamplings of 4 particles with weights .1 .2 .3 .4: the counts pass a chi-square
  test against 4 w (p > 0.001, fixed keys); systematic counts are floor or ceil of 4 w."""
  weights = np.array([0.1, 0.2, 0.3, 0.4])
  keys = jax.random.split(jax.random.key(11), 20000)
  ancestors = np.asarray(jax.vmap(lambda k: resample(k, jnp.log(weights), resampler))(keys))
  counts = np.stack([(ancestors == i).sum(1) for i in range(4)], axis=1)   # [draws, 4]
  assert (counts.sum(1) == 4).all()
  total = counts.sum(0)
  assert scipy.stats.chisquare(total, total.sum() * weights).pvalue > 1e-3
  if resampler == "systematic":
    assert ((counts == np.floor(4 * weights)) | (counts == np.ceil(4 * weights))).all()


def test_effective_size():
  np.testing.assert_allclose(effective_size(jnp.zeros(5)), 5.0, rtol=1e-6)
  np.testing.assert_allclose(effective_size(jnp.log(jnp.array([1.0, 0.0, 0.0]) + 1e-30)), 1.0,
                             rtol=1e-6)
  np.testing.assert_allclose(effective_size(jnp.log(jnp.array([0.5, 0.25, 0.25]))),
                             1.0 / (0.25 + 2 * 0.0625), rtol=1e-6)


def test_gather_rows_takes_stacked_copies_per_example_and_keeps_scalars():
  ancestors = jnp.array([[1, 1, 0], [2, 0, 0]], jnp.int32)   # 2 examples x 3 particles
  single = jnp.arange(12).reshape(6, 2)
  stacked = jnp.arange(24).reshape(12, 2)         # two copies of the six rows (guidance)
  moved = gather_rows({"a": single, "b": stacked, "flag": jnp.bool_(True)}, ancestors)
  rows = [1, 1, 0, 5, 3, 3]
  np.testing.assert_array_equal(moved["a"], np.asarray(single)[rows])
  np.testing.assert_array_equal(moved["b"], np.asarray(stacked)[rows + [r + 6 for r in rows]])
  assert moved["flag"]
  with pytest.raises(ValueError, match="must lead with the batch"):
    gather_rows(jnp.zeros((4, 2)), ancestors)


def test_gather_rows_of_a_sharded_batch_moves_no_data_across_devices():
  """Each device gathers its own examples' rows: the compiled gather of a cache-like leaf
  sharded by its rows over 8 devices has no all-gather of the leaf."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("batch",))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  leaf = jax.device_put(jnp.zeros((16, 64, 4), jnp.float32), rows)     # 8 examples x 2
  ancestors = jax.device_put(jnp.zeros((8, 2), jnp.int32), rows)
  text = jax.jit(gather_rows).lower(leaf, ancestors).compile().as_text()
  assert "all-gather" not in text and "all-to-all" not in text


def log_q(tokens):
  """`sum_l log Q[l, x_l]` of each row, `[N, L] -> [N]`, in float64."""
  return np.log(Q[np.arange(L), np.asarray(tokens)]).sum(-1)


@pytest.mark.parametrize("cfg", [
    MDLM, remdm_jax.sampler_config("llada", block_length=3, num_steps=3, temperature=1.0)],
    ids=["mdlm", "blocks"])
def test_self_rewarding_weight_is_the_log_probability_of_the_tokens(cfg):
  """Without resampling, a particle's final log-weight is the sum of the model's
  log-probabilities of the tokens it committed: `sum_l log Q[l, x_l]` on a product model."""
  result = run(cfg, product, 6, Smc(3, ess_threshold=0.0), return_particles=True)
  particles = np.asarray(result.particles).reshape(-1, L)
  np.testing.assert_allclose(np.asarray(result.log_weights).reshape(-1), log_q(particles),
                             rtol=1e-5)
  np.testing.assert_allclose(result.scores, np.asarray(result.log_weights) / L, rtol=1e-6)
  best = np.asarray(result.particles)[np.arange(6), np.argmax(result.scores, -1)]
  np.testing.assert_array_equal(result.tokens, best)
  assert int(result.nfe) == 3 * cfg.build_plan()[0].rule.trajectory_length(
      cfg.build_plan()[0], 1)


def tilted_target() -> dict:
  """`p(x) exp(r(x)) / Z` over the 27 sequences, exactly."""
  target = {}
  for x in itertools.product(range(3), repeat=L):
    target[x] = np.prod(Q[np.arange(L), x]) * np.exp(3.0 * (len(set(x)) == 1))
  total = sum(target.values())
  return {x: p / total for x, p in target.items()}


def weighted_estimate(result) -> dict:
  """The particles' weighted empirical measure, averaged over the examples."""
  w = np.asarray(jax.nn.softmax(result.log_weights, axis=-1))
  estimate = {}
  for b, p in itertools.product(range(w.shape[0]), range(w.shape[1])):
    x = tuple(int(i) for i in np.asarray(result.particles[b, p]))
    estimate[x] = estimate.get(x, 0.0) + w[b, p] / w.shape[0]
  return estimate


@pytest.mark.slow
def test_reward_smc_approaches_the_tilted_target_as_particles_grow():
  """Total variation between the weighted particles (2,000 examples) and the exact tilted
  target: about the untilted model's distance with one particle, falling as particles grow
  (self-normalised weights are biased by O(1/P)), and below 0.04 with 128 (the Monte Carlo
  error of 2,000 examples is about 0.02)."""
  target = tilted_target()
  distance = {}
  for num in (1, 8, 128):
    result = run(MDLM, product, 2000, Smc(num, reward=all_equal, resampler="systematic",
                                          every=1), key=9, return_particles=True)
    estimate = weighted_estimate(result)
    distance[num] = 0.5 * sum(abs(target[x] - estimate.get(x, 0.0)) for x in target)
  model = {x: np.prod(Q[np.arange(L), x]) for x in target}
  untilted = 0.5 * sum(abs(target[x] - model[x]) for x in target)
  assert abs(distance[1] - untilted) < 0.05, (distance, untilted)
  assert distance[1] > distance[8] > distance[128], distance
  assert distance[128] < 0.04, distance


def test_best_of_n_with_a_reward_picks_the_best_particle():
  result = run(MDLM, product, 50, BestOfN(8, reward=all_equal), key=2, return_particles=True)
  rewards = np.asarray(all_equal(jnp.asarray(result.particles).reshape(-1, L))).reshape(50, 8)
  np.testing.assert_array_equal(np.asarray(result.scores), rewards)
  np.testing.assert_array_equal(np.asarray(all_equal(result.tokens)), rewards.max(-1))
  assert (rewards.max(-1) > 0).mean() > (rewards[:, 0] > 0).mean()


@pytest.mark.parametrize("call,message", [
    (lambda: Smc(0), "num"),
    (lambda: Smc(2, beta=0.0), "beta"),
    (lambda: Smc(2, resampler="stratified"), "unknown resampler"),
    (lambda: Smc(2.5), "num must be an integer"),
    (lambda: ParticleGibbs(2, resampler="systematic"), "resamples multinomially"),
    (lambda: remdm_jax.particles.ParticlesConfig(kind="best_of_n", num=2, every=3),
     "does not use every"),
    (lambda: run(MDLM, product, 2, Smc(2, reward=lambda x: np.asarray(x).sum(-1))),
     "reward must be jittable"),
    (lambda: Smc(2, ess_threshold=1.5), "ess_threshold"),
    (lambda: Smc(2, choose="reward"), "needs a reward"),
    (lambda: BestOfN(2, reward="exact"), "reward must be a function"),
    (lambda: run(MDLM, product, 2, "smc"), "particles must be None or a method"),
    (lambda: run(MDLM, product, 2, None, return_particles=True), "needs particles"),
    (lambda: run(MDLM, product, 2, Smc(2), return_trajectory=True, return_particles=True),
     "exclusive"),
    (lambda: run(MDLM, product, 2, Smc(2, reward=lambda x: jnp.zeros((3,)))),
     "one value per particle row"),
])
def test_bad_particle_arguments_are_refused_in_one_line(call, message):
  with pytest.raises((ValueError, TypeError), match=message) as error:
    call()
  assert "\n" not in str(error.value)


def test_particle_gibbs_resamples_at_every_step_by_default_and_the_config_follows():
  """Conditional SMC resamples at every allowed step; SMC keeps the references' 0.5."""
  config = remdm_jax.particles.ParticlesConfig
  assert ParticleGibbs(2).ess_threshold == 1.0 and Smc(2).ess_threshold == 0.5
  assert config(kind="gibbs", num=2).method() == ParticleGibbs(2)
  assert config(kind="smc", num=2).method() == Smc(2)
  assert config(kind="gibbs", num=2, ess_threshold=0.25).method().ess_threshold == 0.25


@pytest.mark.slow
def test_sampling_job_records_its_particles_and_refuses_other_ones(tmp_path):
  """`remdm-sample --particles.kind=smc --particles.num=2` samples, records the method in
  the manifest, reruns as done, and refuses another method in the same folder."""
  from remdm_jax.cli import sample_main
  out = tmp_path / "job"
  flags = ["--job.num_samples=2", "--job.batch_size=2", "--sampler.num_steps=4",
           "--job.seq_len=16", f"--job.out={out}", "--job.quiet=true"]
  assert sample_main(flags + ["--particles.kind=smc", "--particles.num=2"]) == 0
  manifest = remdm_jax.files.read_json(out / "manifest.json", "manifest")
  assert manifest["particles"]["kind"] == "smc" and manifest["particles"]["num"] == 2
  assert manifest["particles"]["ess_threshold"] == 0.5      # the method's, not None
  assert sample_main(flags + ["--particles.kind=smc", "--particles.num=2",
                              "--particles.ess_threshold=0.5"]) == 0   # the same method, done
  assert sample_main(flags + ["--particles.kind=best_of_n", "--particles.num=2"]) != 0


def _reference_of_first_pass(smc_result, batch, key):
  """The particle the first pass of particle Gibbs hands on: a draw by its final weights with
  the key `fold_in(fold_in(example key, CHOOSE_STREAM), 0)`."""
  from remdm_jax.sampling.particle_scan import CHOOSE_STREAM
  keys = [jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(key), b),
                                                CHOOSE_STREAM), 0) for b in range(batch)]
  chosen = [int(jax.random.categorical(k, w)) for k, w in zip(keys, smc_result.log_weights)]
  return np.asarray(smc_result.particles)[np.arange(batch), chosen]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["cap", "dual_cache"])
def test_particle_gibbs_replays_its_reference_exactly(tiny, case):
  """One iteration is Smc itself; in the second, particle 0 of every example replays the
  line of ancestors drawn from the first (resampling at every step, so the line crosses
  rows), ending on exactly its tokens."""
  if case == "cap":
    cfg, denoiser, batch, options = (remdm_jax.sampler_config(strategy="cap", num_steps=6,
                                                              eta=0.2), product, 6, {})
  else:
    cfg = remdm_jax.sampler_config("llada", block_length=4, num_steps=2, temperature=1.0,
                                   kv_cache="dual")
    denoiser, batch = tiny, 3
    options = dict(seq_len=16, mask_id=MASK_ID, prompt=llada_prompt(3, seed=4))
  method = dict(num=4, every=1, ess_threshold=1.0)
  smc = run(cfg, denoiser, batch, Smc(**method), key=5, return_particles=True, **options)
  once = run(cfg, denoiser, batch, ParticleGibbs(**method, iterations=1), key=5,
             return_particles=True, **options)
  np.testing.assert_array_equal(once.particles, smc.particles)
  twice = run(cfg, denoiser, batch, ParticleGibbs(**method, iterations=2), key=5,
              return_particles=True, **options)
  np.testing.assert_array_equal(np.asarray(twice.particles)[:, 0],
                                _reference_of_first_pass(smc, batch, 5))
  assert int(twice.nfe) == 2 * int(smc.nfe)


@pytest.mark.slow
def test_particle_gibbs_approaches_the_tilted_target_as_iterations_grow():
  """With 4 particles, the returned sequence (a draw by the last pass's weights; 8,000
  examples) moves toward the exact tilted target as iterations grow: total variation 0.35
  after one pass, 0.15 after four, 0.02 after sixteen (Monte Carlo error about 0.02)."""
  target = tilted_target()
  distance = {}
  for iterations in (1, 4, 16):
    tokens = np.asarray(run(MDLM, product, 8000, ParticleGibbs(
        4, reward=all_equal, every=1, iterations=iterations, choose="weight"), key=9))
    rows, counts = np.unique(tokens, axis=0, return_counts=True)
    estimate = {tuple(int(i) for i in r): c / len(tokens) for r, c in zip(rows, counts)}
    distance[iterations] = 0.5 * sum(abs(target[x] - estimate.get(x, 0.0)) for x in target)
  assert distance[1] > distance[4] > distance[16], distance
  assert distance[16] < 0.04, distance


def test_a_minus_infinite_reward_is_a_constraint_without_nan_weights():
  """Reward -inf unless position 2 holds id 2: no weight is NaN, and every example whose
  particles include a valid sequence returns one."""
  def constraint(x):
    return jnp.where(x[:, 2] == 2, 0.0, -jnp.inf)
  result = run(MDLM, product, 64, Smc(8, reward=constraint, every=1, choose="weight"), key=3,
               return_particles=True)
  assert not np.isnan(np.asarray(result.log_weights)).any()
  valid = (np.asarray(result.particles)[:, :, 2] == 2).any(axis=1)
  assert valid.mean() > 0.5
  np.testing.assert_array_equal(np.asarray(result.tokens)[valid, 2], 2)


def test_keys_of_another_implementation_work():
  key = jax.random.key(4, impl="rbg")
  method = ParticleGibbs(3, every=1, ess_threshold=1.0, iterations=2)
  tokens = remdm_jax.sample(key, product, MDLM, batch_size=2, seq_len=L, mask_id=MASK,
                            particles=method)
  assert tokens.shape == (2, L)


def test_progress_counts_the_steps_of_every_pass():
  seen = []
  sampler = remdm_jax.make_sampler(product, MDLM, batch_size=2, seq_len=L, mask_id=MASK,
                                   particles=ParticleGibbs(2, iterations=3),
                                   on_step=lambda step: seen.append(int(step)))
  sampler(jax.random.key(0)).block_until_ready()
  jax.effects_barrier()
  assert sampler.num_steps() == 3 * 8
  assert sorted(seen) == list(range(24))

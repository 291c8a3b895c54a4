"""The Denoiser type: a pytree whose parameters are leaves, whose contract survives wrapping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import remdm_jax
from remdm_jax import Classifier, Denoiser, sampler_config
from remdm_jax.denoiser import ensure_denoiser, check_output

from references.mixture import MASK_ID


def _apply(params, z, t):
  """Logits `[B, L, 5]` from a table of token logits, scaled by `1 + t`."""
  return params["table"][z] * (1.0 + t[:, None, None])


def _params(seed):
  return {"table": jax.random.normal(jax.random.key(seed), (5, 5))}


def test_parameters_are_leaves_and_functions_are_structure():
  den = Denoiser(_apply, _params(0), reads_t=True, vocab_size=5)
  leaves, treedef = jax.tree.flatten(den)
  assert len(leaves) == 1 and leaves[0].shape == (5, 5)
  rebuilt = jax.tree.unflatten(treedef, [2 * leaves[0]])
  assert isinstance(rebuilt, Denoiser) and rebuilt.reads_t and rebuilt.vocab_size == 5
  z, t = jnp.zeros((2, 3), jnp.int32), jnp.array([0.0, 1.0])
  np.testing.assert_allclose(rebuilt(z, t), 2 * den(z, t))
  other = den.with_params(_params(1))
  assert jax.tree.structure(other) == treedef           # new weights, same executable
  traces = []

  @jax.jit
  def call(den, z, t):
    traces.append(1)
    return den(z, t)

  call(den, z, t)
  call(other, z, t)
  assert len(traces) == 1


def test_wrapping_keeps_or_declares_the_contract():
  plain = lambda z, t: jnp.zeros(z.shape + (5,))
  assert ensure_denoiser(plain).reads_t                     # conservative: assumed to read t
  assert not Denoiser.wrap(plain, reads_t=False).reads_t
  assert (jax.tree.structure(Denoiser.wrap(plain)) ==    # equal wraps share a compile
          jax.tree.structure(Denoiser.wrap(plain)))
  den = Denoiser(_apply, _params(0), reads_t=False)
  assert ensure_denoiser(den) is den
  with pytest.raises(TypeError, match="denoiser must be a function"):
    ensure_denoiser(3)
  with pytest.raises(TypeError, match="already a Denoiser"):
    Denoiser.wrap(den)
  with pytest.raises(ValueError, match="both features_apply and head_apply"):
    Denoiser(_apply, features_apply=_apply)
  with pytest.raises(TypeError, match="reads_t must be a bool"):
    Denoiser(_apply, reads_t=1)
  with pytest.raises(ValueError, match="vocab_size must be >= 1, got 0"):
    Denoiser(_apply, vocab_size=0)
  with pytest.raises(TypeError, match="vocab_size must be an integer or None, got 5.0"):
    Denoiser(_apply, vocab_size=5.0)
  assert Denoiser(_apply, vocab_size=np.int64(5)).vocab_size == 5


def test_output_is_checked_against_the_declared_vocabulary():
  den = Denoiser(_apply, _params(0), vocab_size=6)
  with pytest.raises(ValueError, match="declares vocab_size 6 but returns logits with V = 5"):
    check_output(den, 2, 3, MASK_ID)
  assert check_output(den.__class__(_apply, _params(0)), 2, 3, MASK_ID) == 5
  with pytest.raises(ValueError, match=r"mask_id must be in \[0, V\) = \[0, 5\), got 5"):
    check_output(Denoiser(_apply, _params(0)), 2, 3, 5)


def test_cache_needs_a_declared_time_free_denoiser_through_any_wrapper():
  """A time-free denoiser caches; the same function wrapped in a lambda is assumed to read t
  and is refused, naming how to declare it."""
  free = Denoiser(lambda params, z, t: params["table"][z], _params(0), reads_t=False)
  cfg = sampler_config(num_steps=4, cache=True)
  kwargs = dict(batch_size=2, seq_len=3, mask_id=MASK_ID)
  out = remdm_jax.sample(jax.random.key(0), free, cfg, **kwargs)
  assert out.shape == (2, 3)
  with pytest.raises(ValueError, match=r"Denoiser.wrap\(fn, reads_t=False\)"):
    remdm_jax.sample(jax.random.key(0), lambda z, t: free(z, t), cfg, **kwargs)
  guided = remdm_jax.classifier_free_guidance(free, free, 2.0)
  assert not guided.reads_t                             # both inputs ignore t
  remdm_jax.sample(jax.random.key(0), guided, cfg, **kwargs)


def test_guidance_carries_the_contract_and_takes_gamma_as_a_parameter():
  cond = Denoiser(_apply, _params(0), reads_t=True, vocab_size=5)
  uncond = Denoiser(_apply, _params(1), reads_t=False, vocab_size=5)
  guided = remdm_jax.classifier_free_guidance(cond, uncond, 2.0)
  assert guided.reads_t and guided.vocab_size == 5 and not guided.is_split
  cfg = sampler_config("cap", eta=0.05, num_steps=4)
  run = remdm_jax.make_sampler(guided, cfg, batch_size=2, seq_len=3, mask_id=MASK_ID)
  stronger = remdm_jax.classifier_free_guidance(cond, uncond, 3.0)
  np.testing.assert_array_equal(   # gamma as a parameter gives the directly sampled tokens
      run(jax.random.key(0), stronger.params),
      remdm_jax.sample(jax.random.key(0), stronger, cfg, batch_size=2, seq_len=3,
                       mask_id=MASK_ID))
  with pytest.raises(ValueError, match=r"vocab_size values differ: \[5, 7\]"):
    remdm_jax.classifier_free_guidance(cond, Denoiser(_apply, vocab_size=7), 1.0)
  classifier = Classifier(lambda w, x, t: x.sum(1) @ w, jnp.ones((5, 2)))
  cbg = remdm_jax.classifier_guidance(uncond, classifier, target=1, gamma=1.0,
                                      mask_id=MASK_ID)
  assert cbg.reads_t and cbg.vocab_size == 5            # the classifier reads t
  assert jax.tree.leaves(cbg.params)[1].shape == (5, 2)  # the classifier's weights are leaves


def test_producers_with_equal_settings_share_one_structure():
  """Two `as_denoiser` calls, and guidance of other strengths, give denoisers of one pytree
  structure (one compiled sampler); another class does not."""
  from flax import nnx
  from remdm_jax.models import DiT, DiTConfig, as_denoiser
  model = DiT(DiTConfig(vocab_size=5, hidden=8, heads=2, blocks=1, cond_dim=4, max_length=3,
                        num_classes=2), rngs=nnx.Rngs(0))
  structure = lambda den: jax.tree.structure(den)
  assert structure(as_denoiser(model, label=1)) == structure(as_denoiser(model, label=1))
  assert structure(as_denoiser(model, label=1)) != structure(as_denoiser(model, label=0))
  cfg_at = lambda gamma: remdm_jax.classifier_free_guidance(
      as_denoiser(model, label=1), as_denoiser(model), gamma)
  assert structure(cfg_at(1.0)) == structure(cfg_at(3.0))
  with pytest.raises(ValueError, match=r"label must be in \[0, 2\) \(the model's 2 classes\)"):
    as_denoiser(model, label=2)


def test_sampler_arguments_are_checked():
  plain = Denoiser.wrap(lambda z, t: jnp.zeros(z.shape + (5,)))
  cfg = sampler_config(num_steps=2)
  run = remdm_jax.make_sampler(plain, cfg, batch_size=2, seq_len=3, mask_id=MASK_ID)
  with pytest.raises(ValueError, match="params were given, but this denoiser is a plain"):
    run(jax.random.key(0), {"w": jnp.ones(())})
  with pytest.raises(ValueError, match=r"first_index must be in \[0, 2147483646\]"):
    run(jax.random.key(0), first_index=2 ** 31 - 1)
  for key, given in [(None, "NoneType None"), (3, r"int 3 \(for seed 3: jax.random.key\(3\)\)")]:
    with pytest.raises(TypeError, match=r"key must be jax.random.key\(seed\) or a legacy .*, "
                       "got " + given):
      run(key)
  unset = remdm_jax.make_sampler(Denoiser(_apply), cfg, batch_size=2, seq_len=3,
                                 mask_id=MASK_ID)
  with pytest.raises(ValueError, match=r"params: this Denoiser\(apply\) holds no parameters"):
    unset(jax.random.key(0))
  assert unset(jax.random.key(0), _params(0)).shape == (2, 3)   # given at the call: fine
  for field, value, error in [("vocab_size", 0, ValueError), ("mask_id", -1, ValueError),
                              ("mask_id", 1.5, TypeError)]:
    with pytest.raises(error, match=f"Denoiser.{field} must be"):
      Denoiser(_apply, **{field: value})
  with pytest.raises(ValueError, match="Classifier.num_classes must be >= 2, got 1"):
    remdm_jax.Classifier(_apply, num_classes=1)
  compiled = remdm_jax.make_sampler(Denoiser(_apply, _params(0)), cfg, batch_size=2,
                                    seq_len=3, mask_id=MASK_ID).compile(jax.random.key(0))
  eager = compiled(jax.random.key(1))
  traced = jax.jit(lambda key: compiled(key))(jax.random.key(1))   # a trace uses jit
  np.testing.assert_array_equal(eager, traced)


def test_guidance_choices_check_their_inputs():
  uncond = Denoiser(_apply, _params(1), vocab_size=5)
  classifier = Classifier(lambda w, x, t: x.sum(1) @ w, jnp.ones((5, 2)))
  with pytest.raises(ValueError, match="guidance 'cfg' needs a target class"):
    remdm_jax.Cfg().denoiser(lambda label: uncond, target=None, mask_id=MASK_ID)
  with pytest.raises(ValueError, match="guidance 'cbg' without a classifier"):
    remdm_jax.Cbg().denoiser(lambda label: uncond, target=1, mask_id=MASK_ID)
  with pytest.raises(ValueError, match=r"target must hold classes in \[0, inf\), got -1"):
    remdm_jax.classifier_guidance(uncond, classifier, target=-1, gamma=1.0, mask_id=MASK_ID)


def test_models_as_denoiser_picks_the_family():
  """`remdm_jax.models.as_denoiser` wraps a DiT (reads t) and a LLaDA model (ignores t, has its
  own mask id) alike, and refuses what does not apply."""
  from flax import nnx
  from remdm_jax.models import DiT, DiTConfig, LLaDA, LLaDAConfig, as_denoiser
  llada = LLaDA(LLaDAConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
                            mlp_hidden_size=16, max_sequence_length=8, mask_id=10,
                            param_dtype="float32", dtype="float32"), rngs=nnx.Rngs(0))
  dit = DiT(DiTConfig(vocab_size=7, hidden=8, heads=2, blocks=1, cond_dim=4, max_length=6),
            rngs=nnx.Rngs(0))
  den = as_denoiser(llada)
  assert (den.reads_t, den.vocab_size, den.mask_id, den.is_split) == (False, 11, 10, True)
  z = jnp.full((2, 5), 10, jnp.int32)
  np.testing.assert_allclose(den(z, jnp.ones((2,))), llada(z), rtol=1e-6)
  assert as_denoiser(dit).reads_t == dit.cfg.time_conditioning and as_denoiser(dit).mask_id is None
  with pytest.raises(ValueError, match="label do not apply to a LLaDA model"):
    as_denoiser(llada, label=1)
  with pytest.raises(TypeError, match=r"model must be a model of a registered family \(dit: "
                     r"DiT, NoisyClassifier; llada: LLaDA.*got str"):
    as_denoiser("model")

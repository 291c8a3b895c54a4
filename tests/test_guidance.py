"""D-CFG and D-CBG against direct NumPy computations on toy models and classifiers, and a
guided sampler against the distribution it should sample (one position, so exact)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import remdm_jax
from remdm_jax import sampler_config
from remdm_jax.guidance import exact_classifier_scores, gradient_classifier_scores

V, L, MASK = 5, 4, 4


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _toy_denoiser(seed=0):
  """Logits that depend on the sequence: a fixed table plus a mix of the other tokens."""
  rng = np.random.default_rng(seed)
  table, mix = rng.normal(size=(L, V)), 0.5 * rng.normal(size=(V, V))

  def numpy_logits(z):                                        # [B, L] -> [B, L, V]
    onehot = np.eye(V)[z]
    return table[None] + onehot.sum(1, keepdims=True) @ mix

  def denoiser(z, t):
    onehot = jax.nn.one_hot(z, V, dtype=jnp.float32)
    return jnp.asarray(table, jnp.float32)[None] + onehot.sum(1, keepdims=True) @ jnp.asarray(
        mix, jnp.float32)
  return denoiser, numpy_logits


def _toy_classifier(scale=1.0, seed=1, classes=3):
  """A classifier that is not linear in the one-hot input (a tanh feature)."""
  rng = np.random.default_rng(seed)
  w, u = scale * rng.normal(size=(L, V, classes)), rng.normal(size=(classes,))

  def numpy_logits(x):                                        # [N, L, V] -> [N, C]
    h = np.einsum("nlv,lvc->nc", x, w)
    return h + np.tanh(h) * u

  def classifier(x, t):
    h = jnp.einsum("nlv,lvc->nc", x, jnp.asarray(w, jnp.float32))
    return h + jnp.tanh(h) * jnp.asarray(u, jnp.float32)[None]
  return classifier, numpy_logits


def _numpy_exact_guided(z, den_np, cls_np, target, gamma):
  log_x = _log_softmax(den_np(z))
  out = log_x.copy()
  for b in range(z.shape[0]):
    for l in range(L):
      if z[b, l] != MASK:
        continue
      scores = []
      for v in range(V):
        changed = z[b].copy()
        changed[l] = v
        scores.append(_log_softmax(cls_np(np.eye(V)[changed][None]))[0, target[b]])
      out[b, l] = _log_softmax(log_x[b, l] + gamma * np.array(scores))
  return out


Z = np.array([[4, 1, 4, 4], [0, 4, 2, 4], [4, 4, 4, 4]], np.int32)
T = np.full((3,), 0.5, np.float32)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.5])
def test_exact_d_cbg_matches_numpy(gamma):
  den, den_np = _toy_denoiser()
  cls, cls_np = _toy_classifier()
  target = np.array([0, 2, 1])
  guided = remdm_jax.classifier_guidance(den, cls, target=jnp.asarray(target), gamma=gamma,
                                         mask_id=MASK, form="exact")
  np.testing.assert_allclose(np.asarray(guided(jnp.asarray(Z), jnp.asarray(T))),
                             _numpy_exact_guided(Z, den_np, cls_np, target, gamma), atol=2e-5)


def test_gamma_zero_is_the_denoiser_and_decoded_positions_are_untouched():
  den, _ = _toy_denoiser()
  cls, _ = _toy_classifier()
  plain = jax.nn.log_softmax(den(jnp.asarray(Z), jnp.asarray(T)), axis=-1)
  for form in ("exact", "gradient"):
    zero = remdm_jax.classifier_guidance(den, cls, target=1, gamma=0.0, mask_id=MASK,
                                         form=form)(jnp.asarray(Z), jnp.asarray(T))
    np.testing.assert_allclose(np.asarray(zero), np.asarray(plain), atol=1e-6)
    strong = remdm_jax.classifier_guidance(den, cls, target=1, gamma=3.0, mask_id=MASK,
                                           form=form)(jnp.asarray(Z), jnp.asarray(T))
    decoded = Z != MASK
    np.testing.assert_allclose(np.asarray(strong)[decoded], np.asarray(plain)[decoded],
                               atol=1e-6)
    assert np.abs(np.asarray(strong) - np.asarray(plain))[~decoded].max() > 0.1


def test_gradient_form_agrees_with_exact_to_first_order():
  """On a classifier with weights of size eps the exact and first-order scores differ by
  O(eps^2) while each moves the log-probabilities by O(eps): the ratio shrinks with eps."""
  den, _ = _toy_denoiser()
  z, t = jnp.asarray(Z), jnp.asarray(T)
  plain = np.asarray(jax.nn.log_softmax(den(z, t), axis=-1))
  ratios = []
  for eps in (0.1, 0.01):
    cls, _ = _toy_classifier(scale=eps)
    exact, grad = (np.asarray(remdm_jax.classifier_guidance(
        den, cls, target=0, gamma=1.0, mask_id=MASK, form=form)(z, t))
        for form in ("exact", "gradient"))
    ratios.append(np.abs(exact - grad).max() / np.abs(exact - plain).max())
  assert ratios[1] < 0.2 * ratios[0] and ratios[1] < 0.02, ratios


def test_exact_and_gradient_scores_on_a_linear_log_probability():
  """When log p(y | x) is linear in x (two classes, one of them with a constant logit that
  dominates), the first-order scores equal the exact ones up to a per-position constant."""
  w = np.random.default_rng(3).normal(size=(L, V))
  classifier = lambda x, t: jnp.stack(   # log p(0 | x) = w . x - log(1 + tiny) ~ linear
      [jnp.einsum("nlv,lv->n", x, jnp.asarray(w, jnp.float32)),
       jnp.full(x.shape[:1], -30.0)], axis=-1)
  z, t = jnp.asarray(Z), jnp.asarray(T)
  target = jnp.zeros((3,), jnp.int32)
  exact = np.asarray(exact_classifier_scores(classifier, z, t, target, V))
  grad = np.asarray(gradient_classifier_scores(classifier, z, t, target, V))
  centred = lambda s: s - s.mean(-1, keepdims=True)
  np.testing.assert_allclose(centred(exact), centred(grad), atol=1e-5)


def test_exact_scores_only_the_selected_positions_in_as_many_calls_as_the_fullest_row():
  """With `selected` = the masked positions: equal to the all-positions scores there, zero
  elsewhere, from max_b (masked count of b) classifier calls of B * V sequences each
  (Z's first two rows have 3 and 2 masks: 3 calls, against L = 4 for all positions)."""
  cls, _ = _toy_classifier()
  calls = []

  def counted(x, t):
    jax.debug.callback(lambda n: calls.append(int(n)), x.shape[0])
    return cls(x, t)

  z, t, target = jnp.asarray(Z), jnp.asarray(T), jnp.asarray([0, 2, 1], jnp.int32)
  every = np.asarray(exact_classifier_scores(cls, z, t, target, V))
  z_short = jnp.asarray(Z[:2])
  only = np.asarray(jax.jit(exact_classifier_scores, static_argnums=(0, 4))(
      counted, z_short, t[:2], target[:2], V, z_short == MASK))
  jax.effects_barrier()
  masked = Z[:2] == MASK
  np.testing.assert_allclose(only[masked], every[:2][masked], atol=1e-6)
  assert np.all(only[~masked] == 0.0)
  assert calls == [2 * V] * 3, calls


def test_d_cfg_matches_numpy_and_recovers_both_models():
  den_c, np_c = _toy_denoiser(seed=4)
  den_u, np_u = _toy_denoiser(seed=5)
  z, t = jnp.asarray(Z), jnp.asarray(T)
  for gamma in (0.0, 1.0, 1.7):
    got = np.asarray(remdm_jax.classifier_free_guidance(den_c, den_u, gamma)(z, t))
    direct = _log_softmax(gamma * _log_softmax(np_c(Z)) + (1 - gamma) * _log_softmax(np_u(Z)))
    np.testing.assert_allclose(got, direct, atol=2e-5)
  np.testing.assert_allclose(np.asarray(remdm_jax.classifier_free_guidance(
      den_c, den_u, 1.0)(z, t)), _log_softmax(np_c(Z)), atol=2e-5)


@pytest.mark.parametrize("kind", ["cbg", "cfg"])
def test_guided_sampler_shifts_mass_as_predicted(kind):
  """One position, so one unmasking draw from the guided x_theta: the sampled frequencies
  match `p(v) p(y | v)^gamma` (D-CBG) or `p(v | y)^gamma p(v)^(1 - gamma)` (D-CFG), renormalised
  over the 4 tokens, within 5 binomial sd on 20000 samples (fixed seed)."""
  prior = np.array([0.4, 0.3, 0.2, 0.1])
  likelihood = np.array([0.1, 0.3, 0.6, 0.9])                 # p(y = 1 | v)
  gamma, n = 2.0, 20_000
  logits = jnp.asarray(np.log(np.append(prior, 1e-30)), jnp.float32)
  uncond = lambda z, t: jnp.broadcast_to(logits, z.shape + (V,))
  if kind == "cbg":
    table = jnp.asarray(np.log(np.stack([1 - likelihood, likelihood], -1)), jnp.float32)
    classifier = lambda x, t: jnp.einsum("nlv,vc->nc", x[..., :4], table)   # one position
    denoiser = remdm_jax.classifier_guidance(uncond, classifier, target=1, gamma=gamma,
                                             mask_id=MASK, form="exact")
    expected = prior * likelihood ** gamma
  else:
    posterior = prior * likelihood / (prior * likelihood).sum()
    cond_logits = jnp.asarray(np.log(np.append(posterior, 1e-30)), jnp.float32)
    cond = lambda z, t: jnp.broadcast_to(cond_logits, z.shape + (V,))
    denoiser = remdm_jax.classifier_free_guidance(cond, uncond, gamma)
    expected = posterior ** gamma * prior ** (1 - gamma)
  expected = expected / expected.sum()
  tokens = np.asarray(remdm_jax.sample(
      jax.random.key(0), denoiser, sampler_config(strategy="mdlm", num_steps=4),
      batch_size=n, seq_len=1, mask_id=MASK))[:, 0]
  freq = np.bincount(tokens, minlength=V)[:4] / n
  sd = np.sqrt(expected * (1 - expected) / n)
  assert np.all(np.abs(freq - expected) < 5 * sd), (freq, expected)
  assert np.abs(freq - prior).max() > 0.1                    # guidance moved the mass


def test_bad_guidance_arguments():
  den, _ = _toy_denoiser()
  cls, _ = _toy_classifier()
  with pytest.raises(TypeError, match="classifier must be a function"):
    remdm_jax.classifier_guidance(den, None, target=0, gamma=1.0, mask_id=MASK)
  with pytest.raises(ValueError, match="unknown form 'taylor'"):
    remdm_jax.classifier_guidance(den, cls, target=0, gamma=1.0, mask_id=MASK, form="taylor")
  with pytest.raises(ValueError, match="gamma must be a finite"):
    remdm_jax.classifier_guidance(den, cls, target=0, gamma=float("nan"), mask_id=MASK)


def _guided_sample(guided, mask_id=MASK):
  return remdm_jax.sample(jax.random.key(0), guided, sampler_config(num_steps=4), batch_size=2,
                          seq_len=L, mask_id=mask_id)


@pytest.mark.parametrize("form", ["gradient", "exact"])
def test_guidance_is_never_silently_unguided(form):
  """Each way a guided denoiser could sample as if unguided is an error before (or, for a
  target outside an undeclared classifier's classes, instead of) any tokens."""
  den, _ = _toy_denoiser()
  cls, _ = _toy_classifier()
  guide = lambda classifier, **kw: remdm_jax.classifier_guidance(
      den, classifier, gamma=2.0, form=form, **{"target": 1, "mask_id": MASK, **kw})
  with pytest.raises(ValueError, match=r"classifier must return logits \[B, C\] with C >= 2 "
                     r"classes for \d+ inputs, got \[\d+, 1\]"):
    _guided_sample(guide(lambda x, t: cls(x, t)[:, :1], target=0))
  with pytest.raises(ValueError, match="classifier must return floating logits .*int32"):
    _guided_sample(guide(lambda x, t: cls(x, t).astype(jnp.int32)))
  with pytest.raises(ValueError, match="mask_id 3 differs from the denoiser's own mask id 4"):
    _guided_sample(guide(cls), mask_id=3)
  with pytest.raises(ValueError, match=r"target must hold classes in \[0, inf\), got -1"):
    guide(cls, target=-1)
  declared = remdm_jax.Classifier(lambda params, x, t: cls(x, t), num_classes=3)
  with pytest.raises(ValueError, match=r"target must hold classes in \[0, 3\) \(the "
                     r"classifier's classes\), got 3"):
    guide(declared, target=np.array([0, 3]))
  with pytest.raises(ValueError, match=r"target must hold classes in \[0, 3\) \(the "
                     r"classifier returns logits \[B, 3\]\), got 3"):
    _guided_sample(guide(cls, target=3))       # undeclared classes: refused when traced
  swapped = guide(cls, target=1)
  swapped = swapped.with_params(swapped.params[:3] + (jnp.asarray(3, jnp.int32),))
  with pytest.raises(remdm_jax.NonFiniteLogitsError, match="target outside its classifier"):
    _guided_sample(swapped)                    # a target swapped in as data: NaN, never unguided
  sized = remdm_jax.Denoiser.wrap(den, vocab_size=V)
  with pytest.raises(ValueError, match=r"mask_id must be in \[0, 4\] \(the denoiser's "
                     r"vocabulary\), got 5"):
    remdm_jax.classifier_guidance(sized, cls, target=0, gamma=1.0, mask_id=5, form=form)


def _class_conditional_dit():
  from flax import nnx
  from remdm_jax.models import DiT, DiTConfig
  model = DiT(DiTConfig(vocab_size=V, hidden=16, heads=2, blocks=1, cond_dim=8, max_length=L,
                        num_classes=2, time_conditioning=True), rngs=nnx.Rngs(0))
  for layer in (model.output_linear, model.output_adaLN, model.blocks[0].adaLN_modulation):
    layer.kernel[...] = 0.5 * jax.random.normal(jax.random.key(2), layer.kernel[...].shape)
  return model


def test_class_conditional_dit_and_its_guided_denoisers():
  """Labels change the output, the null class is what `labels=None` gives, and D-CFG of the
  model's conditional and null-class denoisers is its conditional output at gamma = 1."""
  from remdm_jax.models import as_denoiser
  model = _class_conditional_dit()
  z, sigma = jnp.asarray(Z), jnp.full((3,), 0.7)
  zero, one = (model(z, sigma, labels=jnp.full((3,), y, jnp.int32)) for y in (0, 1))
  null = model(z, sigma)
  assert float(jnp.abs(zero - one).max()) > 1e-3 and float(jnp.abs(zero - null).max()) > 1e-3
  np.testing.assert_array_equal(np.asarray(null), np.asarray(
      model(z, sigma, labels=jnp.full((3,), 2, jnp.int32))))
  t = jnp.full((3,), 0.5)
  cond, uncond = as_denoiser(model, label=1), as_denoiser(model)
  np.testing.assert_allclose(np.asarray(remdm_jax.classifier_free_guidance(cond, uncond, 1.0)(
      z, t)), np.asarray(jax.nn.log_softmax(cond(z, t), axis=-1)), atol=1e-5)
  with pytest.raises(ValueError, match=r"labels must be \[B\] = \[3\] integer class ids"):
    model(z, sigma, labels=jnp.zeros((2,), jnp.int32))
  from remdm_jax.models import DiT, DiTConfig
  from flax import nnx
  plain = DiT(DiTConfig(vocab_size=V, hidden=16, heads=2, blocks=1, cond_dim=8, max_length=L),
              rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="labels need a class-conditional DiT"):
    plain(z, sigma, labels=jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="num_classes needs the adaLN conditioning"):
    DiTConfig(num_classes=2, causal=True)


@pytest.mark.slow
def test_noisy_classifier_guides_a_sampler_in_both_forms():
  """The classifier model plugs into both D-CBG forms and the sampler (finite, normalised
  log-probabilities; tokens drawn), and its one-hot input is what the gradient form needs."""
  from flax import nnx
  from remdm_jax.models import DiTConfig, NoisyClassifier, as_classifier
  net = NoisyClassifier(DiTConfig(vocab_size=V, hidden=16, heads=2, blocks=1, cond_dim=8,
                                  max_length=L, time_conditioning=True, num_classes=2),
                        rngs=nnx.Rngs(1))
  classifier = as_classifier(net)
  den, _ = _toy_denoiser()
  z, t = jnp.asarray(Z), jnp.asarray(T)
  for form in ("exact", "gradient"):
    guided = remdm_jax.classifier_guidance(den, classifier, target=1, gamma=2.0, mask_id=MASK,
                                           form=form)
    out = np.asarray(guided(z, t))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, atol=1e-5)
    if form == "gradient":
      tokens = np.asarray(remdm_jax.sample(jax.random.key(0), guided, sampler_config(
          strategy="cap", eta=0.05, num_steps=4), batch_size=2, seq_len=L, mask_id=MASK))
      assert ((tokens >= 0) & (tokens < MASK)).all()
  with pytest.raises(ValueError, match=r"x must be \[B, L, V = 5\] one-hot rows"):
    classifier(jnp.zeros((2, L), jnp.float32), jnp.zeros((2,)))

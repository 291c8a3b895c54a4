"""Bad arguments at the functional API: one table of calls, each a clear error naming the
argument, the expected shape or range and what was given.

Each section is a list of `Case`s (`LOSS_CASES`, `CHEM_CASES`, `TOKENIZER_CASES`, ...),
concatenated into `CASES`; append a section for another module the same way. A case is an
id ("function/what is wrong"), a zero-argument callable making the bad call, the exception
type, and the substrings its message must contain. Inputs are tiny (V = 5, `[2, 3]` tokens,
a uniform-logits denoiser) so the table runs in a few seconds.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remdm_jax import Denoiser, chem, losses
from remdm_jax.schedules import LogLinear
from remdm_jax.tokenizers import ByteTokenizer, GPT2Tokenizer, encode_rows
from remdm_jax.validation import ArgumentTypeError


class Case(NamedTuple):
  id: str                       # "function/what is wrong"
  call: Callable[[], object]    # makes the bad call
  error: type                   # the exception expected
  message: tuple[str, ...]      # substrings the message must contain


def case(id: str, call: Callable[[], object], error: type, *message: str,
         marks=()) -> pytest.param:
  return pytest.param(Case(id, call, error, message), id=id, marks=marks)


# Losses: V = 5 ids, the last one (4) the mask; x [B, L] = [2, 3].
V, MASK = 5, 4
X = jnp.asarray([[0, 1, 2], [3, 0, 1]], jnp.int32)
KEY = jax.random.key(0)
LABELS = jnp.asarray([0, 1], jnp.int32)


def uniform(z, t):
  """Uniform logits `[B, L, V] float32`."""
  return jnp.zeros(z.shape + (V,), jnp.float32)


def classifier(x, t):
  """Uniform logits over 3 classes, `[B, 3] float32`."""
  return jnp.zeros((x.shape[0], 3), jnp.float32)


def causal(x):
  return jnp.zeros(x.shape + (V,), jnp.float32)


def mdlm(**kwargs):
  args = dict(denoiser=uniform, x=X, key=KEY, mask_id=MASK) | kwargs
  return lambda: losses.mdlm_loss(args.pop("denoiser"), args.pop("x"), args.pop("key"), **args)


def discrete(**kwargs):
  args = dict(x=X, num_steps=4, mask_id=MASK) | kwargs
  return lambda: losses.mdlm_discrete_loss(uniform, args.pop("x"), KEY, **args)


def remdm(**kwargs):
  args = dict(x=X, num_steps=4, sigma_rule="cap", eta=0.1, mask_id=MASK) | kwargs
  return lambda: losses.remdm_loss(uniform, args.pop("x"), KEY, **args)


def classify(**kwargs):
  args = dict(classifier=classifier, x=X, labels=LABELS, mask_id=MASK, vocab_size=V) | kwargs
  return lambda: losses.classifier_loss(args.pop("classifier"), args.pop("x"),
                                        args.pop("labels"), KEY, **args)


def with_id(position, value):
  return X.at[position].set(value)


LOSS_CASES = [
    case("remdm_loss/eta negative", remdm(eta=-1.0), ValueError,
         "eta must be in [0, inf) for sigma_rule 'cap'", "got -1.0"),
    case("remdm_loss/eta nan", remdm(eta=float("nan")), ValueError, "eta", "nan"),
    case("remdm_loss/eta above 1 for rescale", remdm(sigma_rule="rescale", eta=1.5), ValueError,
         "eta must be in [0, 1] for sigma_rule 'rescale'", "got 1.5"),
    case("remdm_loss/eta above 1 for constant", remdm(sigma_rule="constant", eta=2.0),
         ValueError, "eta must be in [0, 1] for sigma_rule 'constant'", "got 2.0"),
    case("remdm_loss/eta with max", remdm(sigma_rule="max", eta=0.5), ValueError,
         "eta does not apply to sigma_rule 'max'", "got 0.5"),
    case("remdm_loss/eta a string", remdm(eta="0.1"), ArgumentTypeError,
         "eta must be a real scalar", "'0.1'"),
    case("remdm_loss/unknown sigma_rule", remdm(sigma_rule="capp"), ValueError,
         "unknown sigma_rule 'capp'", "choose from", "'rescale'"),
    case("remdm_loss/num_steps zero", remdm(num_steps=0), ValueError,
         "num_steps must be in [1, inf)", "got 0"),
    case("mdlm_discrete_loss/num_steps zero", discrete(num_steps=0), ValueError,
         "num_steps must be in [1, inf)", "got 0"),
    case("mdlm_discrete_loss/num_steps negative", discrete(num_steps=-3), ValueError,
         "num_steps must be in [1, inf)", "got -3"),
    case("mdlm_discrete_loss/num_steps fractional", discrete(num_steps=2.5), ArgumentTypeError,
         "num_steps must be an integer", "got 2.5"),
    case("mdlm_loss/valid of floats", mdlm(valid=jnp.full((2, 3), 0.5)), ArgumentTypeError,
         "valid must hold boolean values", "float32"),
    case("mdlm_loss/valid per example", mdlm(x=jnp.zeros((3, 3), jnp.int32),
                                             valid=jnp.ones(3, bool)), ValueError,
         "valid must have shape [B, L]", "[3, 3]", "got [3]"),
    case("mdlm_loss/x id above V", mdlm(x=with_id((1, 2), 7)), ValueError,
         "x must hold ids in [0, 5) other than 4", "got 7 at index (1, 2)"),
    case("mdlm_loss/x id negative", mdlm(x=with_id((0, 1), -1)), ValueError,
         "x must hold ids in [0, 5)", "got -1 at index (0, 1)"),
    case("mdlm_loss/x holds the mask id", mdlm(x=with_id((0, 0), MASK)), ValueError,
         "other than 4", "got 4 at index (0, 0)"),
    case("mdlm_loss/x id above a Denoiser's vocab_size",
         mdlm(denoiser=Denoiser.wrap(uniform, vocab_size=V), x=with_id((1, 0), 6)), ValueError,
         "x must hold ids in [0, 5)", "got 6 at index (1, 0)"),
    case("mdlm_loss/mask_id outside the vocabulary", mdlm(mask_id=V), ValueError,
         "mask_id must be in [0, 5)", "V = 5", "got 5"),
    case("mdlm_loss/mask_id negative", mdlm(mask_id=-1), ValueError,
         "mask_id must be in [0, inf)", "got -1"),
    case("mdlm_loss/x of floats", mdlm(x=X.astype(jnp.float32)), ArgumentTypeError,
         "x must hold integer values", "float32"),
    case("mdlm_loss/x of one dimension", mdlm(x=X[0]), ValueError,
         "x must have 2 dimensions [B, L]", "got shape [3]"),
    case("mdlm_loss/x empty batch", mdlm(x=X[:0]), ValueError,
         "x's batch size B must be in [1, inf)", "got 0"),
    case("mdlm_loss/x None", mdlm(x=None), ArgumentTypeError, "x must be an array", "None"),
    case("mdlm_loss/key None", mdlm(key=None), ArgumentTypeError,
         "key must be jax.random.key(seed)", "got None"),
    case("mdlm_loss/key a raw int", mdlm(key=3), ArgumentTypeError,
         "key must be jax.random.key(seed)", "got int 3"),
    case("mdlm_loss/key batch of keys", mdlm(key=jax.random.split(KEY, 2)), ValueError,
         "key must be a single key", "got shape [2]"),
    case("mdlm_loss/eps zero", mdlm(eps=0.0), ValueError, "eps must be in (0, 1)", "got 0.0"),
    case("mdlm_loss/eps one", mdlm(eps=1.0), ValueError, "eps must be in (0, 1)", "got 1.0"),
    case("mdlm_loss/denoiser not a function", mdlm(denoiser=3), ArgumentTypeError,
         "denoiser must be a function", "got 3"),
    case("mdlm_loss/logits without V", mdlm(denoiser=lambda z, t: jnp.zeros(z.shape)),
         ValueError, "the denoiser's logits must have shape [B, L, V] = [2, 3, *]", "got [2, 3]"),
    case("mdlm_loss/integer logits",
         mdlm(denoiser=lambda z, t: jnp.zeros(z.shape + (V,), jnp.int32)), ArgumentTypeError,
         "the denoiser's logits must hold floating-point values", "int32"),
    case("classifier_loss/label out of range", classify(labels=jnp.asarray([0, 3])),
         ValueError, "labels must hold ids in [0, 3)", "got 3 at index 1"),
    case("classifier_loss/label negative", classify(labels=jnp.asarray([-1, 0])), ValueError,
         "labels must hold ids in [0, 3)", "got -1 at index 0"),
    case("classifier_loss/labels of floats", classify(labels=jnp.asarray([0.0, 1.0])),
         ArgumentTypeError, "labels must hold integer values", "float32"),
    case("classifier_loss/labels per position", classify(labels=jnp.zeros((2, 3), jnp.int32)),
         ValueError, "labels must have shape [B]", "[2]", "got [2, 3]"),
    case("classifier_loss/one class", classify(classifier=lambda x, t: jnp.zeros((2, 1))),
         ValueError, "number of classes C must be in [2, inf)", "got 1"),
    case("classifier_loss/logits per position",
         classify(classifier=lambda x, t: jnp.zeros((2, 3, 3))), ValueError,
         "the classifier's logits must have shape [B, C] = [2, *]", "got [2, 3, 3]"),
    case("classifier_loss/x id above vocab_size", classify(x=with_id((0, 2), V)), ValueError,
         "x must hold ids in [0, 5)", "got 5 at index (0, 2)"),
    case("classifier_loss/vocab_size without the mask", classify(vocab_size=MASK), ValueError,
         "mask_id must be in [0, 4)", "got 4"),
    case("classifier_loss/vocab_size fractional", classify(vocab_size=5.0), ArgumentTypeError,
         "vocab_size must be an integer", "got 5.0"),
    case("ar_loss/x of one position", lambda: losses.ar_loss(causal, X[:, :1]), ValueError,
         "x's length L must be in [2, inf)", "got 1"),
    case("ar_loss/x id above V", lambda: losses.ar_loss(causal, with_id((1, 1), V)), ValueError,
         "x must hold ids in [0, 5)", "got 5 at index (1, 1)"),
    case("ar_loss/valid of ints", lambda: losses.ar_loss(causal, X, jnp.ones((2, 3), jnp.int32)),
         ArgumentTypeError, "valid must hold boolean values", "int32"),
    case("ar_loss/logits_fn not a function", lambda: losses.ar_loss(None, X), ArgumentTypeError,
         "logits_fn must be a function", "None"),
    case("nelbo/weight per position",
         lambda: losses.nelbo(uniform(X, None), X, X, jnp.ones((2, 3)), MASK), ValueError,
         "weight must have shape [B]", "[2]", "got [2, 3]"),
    case("nelbo/z_t of another shape",
         lambda: losses.nelbo(uniform(X, None), X, X[:1], jnp.ones(2), MASK), ValueError,
         "z_t must have shape [B, L]", "[2, 3]", "got [1, 3]"),
    case("nelbo/mask_id outside the logits",
         lambda: losses.nelbo(uniform(X, None), X, X, jnp.ones(2), 9), ValueError,
         "mask_id must be in [0, 5)", "got 9"),
    case("autoregressive_nll/logits of another length",
         lambda: losses.autoregressive_nll(jnp.zeros((2, 4, V)), X), ValueError,
         "logits must have shape [B, L, V] = [2, 3, *]", "got [2, 4, 5]"),
    case("corrupt/alpha_t per position",
         lambda: losses.corrupt(KEY, X, jnp.ones((2, 3)), MASK), ValueError,
         "alpha_t must have shape [B]", "got [2, 3]"),
    case("corrupt/mask_id a float", lambda: losses.corrupt(KEY, X, jnp.ones(2), 4.0),
         ArgumentTypeError, "mask_id must be an integer", "got 4.0"),
    case("continuous_times/batch_size zero", lambda: losses.continuous_times(KEY, 0),
         ValueError, "batch_size must be in [1, inf)", "got 0"),
    case("continuous_times/eps negative", lambda: losses.continuous_times(KEY, 2, -0.1),
         ValueError, "eps must be in (0, 1)", "got -0.1"),
    case("discrete_steps/num_steps zero", lambda: losses.discrete_steps(KEY, 2, 0), ValueError,
         "num_steps must be in [1, inf)", "got 0"),
    case("antithetic_uniform/key a seed", lambda: losses.antithetic_uniform(0, 2),
         ArgumentTypeError, "key must be jax.random.key(seed)", "got int 0"),
    case("remdm_discrete_weight/step of floats",
         lambda: losses.remdm_discrete_weight(LogLinear(), jnp.ones(2), 4),
         ArgumentTypeError, "step must hold integer values", "float32"),
    case("remdm_discrete_weight/eta negative",
         lambda: losses.remdm_discrete_weight(LogLinear(), jnp.ones(2, jnp.int32), 4,
                                              "cap", -0.5), ValueError,
         "eta must be in [0, inf) for sigma_rule 'cap'", "got -0.5"),
    case("mdlm_continuous_weight/t of ints",
         lambda: losses.mdlm_continuous_weight(LogLinear(), jnp.ones(2, jnp.int32)),
         ArgumentTypeError, "t must hold floating-point values", "int32"),
]


# Chem (needs RDKit, the chem extra): lists of SMILES, property names, percentiles.
NEEDS_RDKIT = pytest.mark.skipif(importlib.util.find_spec("rdkit") is None,
                                 reason='the chem extra: pip install -e ".[chem]"')


def chem_case(*args, **kwargs):
  return case(*args, **kwargs, marks=NEEDS_RDKIT)


def training():
  return chem.canonical_set(["CCO", "c1ccccc1"])


CHEM_CASES = [
    chem_case("property_values/a bare string", lambda: chem.property_values("CCO", "qed"),
              ArgumentTypeError, "smiles must be a list of strings", "got str 'CCO'"),
    chem_case("property_values/a non-string item",
              lambda: chem.property_values(["CCO", None], "qed"), ArgumentTypeError,
              "smiles must be a list of strings", "NoneType None at index 1"),
    chem_case("property_values/unknown prop", lambda: chem.property_values(["CCO"], "logp"),
              ValueError, "unknown prop 'logp'", "choose from ['qed', 'rings']"),
    chem_case("canonical_set/a bare string", lambda: chem.canonical_set("CCO"),
              ArgumentTypeError, "smiles must be a list of strings", "got str 'CCO'"),
    chem_case("canonical_set/None", lambda: chem.canonical_set(None), ArgumentTypeError,
              "smiles must be a list of strings", "got NoneType"),
    chem_case("generation_metrics/samples a bare string",
              lambda: chem.generation_metrics("CCO", training(), "qed"), ArgumentTypeError,
              "samples must be a list of strings", "got str 'CCO'"),
    chem_case("generation_metrics/samples empty",
              lambda: chem.generation_metrics([], training(), "qed"), ValueError,
              "samples must be a non-empty list", "got 0"),
    chem_case("generation_metrics/training a bare string",
              lambda: chem.generation_metrics(["CCO"], "CCO", "qed"), ArgumentTypeError,
              "training must be a list of strings", "got str 'CCO'"),
    chem_case("generation_metrics/unknown prop",
              lambda: chem.generation_metrics(["CCO"], training(), "logp"), ValueError,
              "unknown prop 'logp'", "choose from ['qed', 'rings']"),
    chem_case("class_labels/percentile above 100",
              lambda: chem.class_labels(np.arange(4.0), 101.0), ValueError,
              "percentile must be in [0, 100]", "got 101.0"),
    chem_case("class_labels/percentile negative",
              lambda: chem.class_labels(np.arange(4.0), -1.0), ValueError,
              "percentile must be in [0, 100]", "got -1.0"),
    chem_case("class_labels/values of two dimensions",
              lambda: chem.class_labels(np.zeros((2, 2))), ValueError,
              "values must have 1 dimension [N]", "got shape [2, 2]"),
    chem_case("class_labels/values of booleans", lambda: chem.class_labels([True, False]),
              ArgumentTypeError, "values must hold real numbers", "got dtype bool"),
    chem_case("class_labels/no finite value", lambda: chem.class_labels([np.nan]), ValueError,
              "values has no finite entry"),
    chem_case("split_labels/validation a bare string",
              lambda: chem.split_labels(["C", "CC"], "CC", "rings"), ArgumentTypeError,
              "validation must be a list of strings", "got str 'CC'"),
    chem_case("split_labels/percentile above 100",
              lambda: chem.split_labels(["C"], ["CC"], "rings", 150.0), ValueError,
              "percentile must be in [0, 100]", "got 150.0"),
    chem_case("molecule/not a string", lambda: chem.molecule(3), ArgumentTypeError,
              "smiles must be a string", "got int 3"),
    chem_case("canonical/None", lambda: chem.canonical(None), ArgumentTypeError,
              "smiles must be a string", "got NoneType None"),
    chem_case("property_of/no molecule", lambda: chem.property_of(None, "qed"),
              ArgumentTypeError, "mol must be an RDKit molecule", "got None"),
    chem_case("property_of/unknown prop",
              lambda: chem.property_of(chem.molecule("CCO"), "logp"), ValueError,
              "unknown prop 'logp'", "choose from ['qed', 'rings']"),
]


# Tokenizers: text in, integer ids in [0, vocab_size) out and back.
BYTES = ByteTokenizer()


@functools.cache
def gpt2() -> GPT2Tokenizer:
  return GPT2Tokenizer()


TOKENIZER_CASES = [
    case("ByteTokenizer.decode/id above the vocabulary", lambda: BYTES.decode([72, 300]),
         ValueError, "ids must hold ids in [0, 259)", "got 300 at index 1"),
    case("ByteTokenizer.decode/id negative", lambda: BYTES.decode(np.array([-1, 72])),
         ValueError, "ids must hold ids in [0, 259)", "got -1 at index 0"),
    case("ByteTokenizer.decode/a float id", lambda: BYTES.decode([72, 105.7]),
         ArgumentTypeError, "ids must be integer token ids", "float 105.7 at index 1"),
    case("ByteTokenizer.decode/an array of floats", lambda: BYTES.decode(np.array([72.0])),
         ArgumentTypeError, "ids must hold integer values", "float64"),
    case("ByteTokenizer.decode/a string id", lambda: BYTES.decode(["a"]), ArgumentTypeError,
         "ids must be integer token ids", "str 'a' at index 0"),
    case("ByteTokenizer.decode/a string", lambda: BYTES.decode("Hi"), ArgumentTypeError,
         "ids must be a list of integer token ids", "got str 'Hi'"),
    case("ByteTokenizer.decode/None", lambda: BYTES.decode(None), ArgumentTypeError,
         "ids must be a list of integer token ids", "got NoneType"),
    case("ByteTokenizer.decode/a batch", lambda: BYTES.decode(np.zeros((2, 3), np.int32)),
         ValueError, "ids must have 1 dimension [N]", "got shape [2, 3]"),
    case("ByteTokenizer.encode/None", lambda: BYTES.encode(None), ArgumentTypeError,
         "text must be a string", "got NoneType None"),
    case("ByteTokenizer.encode/bytes", lambda: BYTES.encode(b"Hi"), ArgumentTypeError,
         "text must be a string", "got bytes b'Hi'"),
    case("GPT2Tokenizer.decode/id above the vocabulary", lambda: gpt2().decode([15496, 50258]),
         ValueError, "ids must hold ids in [0, 50258)", "got 50258 at index 1"),
    case("GPT2Tokenizer.decode/a float id", lambda: gpt2().decode([1.0]), ArgumentTypeError,
         "ids must be integer token ids", "float 1.0 at index 0"),
    case("GPT2Tokenizer.encode/None", lambda: gpt2().encode(None), ArgumentTypeError,
         "text must be a string", "got NoneType None"),
    case("GPT2Tokenizer/directory a number", lambda: GPT2Tokenizer(3), ArgumentTypeError,
         "directory must be a path", "got 3"),
    case("encode_rows/texts a bare string", lambda: encode_rows(BYTES, "abc", 8, fill=257),
         ArgumentTypeError, "texts must be a list of strings", "got str 'abc'"),
    case("encode_rows/seq_len zero", lambda: encode_rows(BYTES, ["abc"], 0, fill=257),
         ValueError, "seq_len must be in [1, inf)", "got 0"),
    case("encode_rows/fill outside the vocabulary",
         lambda: encode_rows(BYTES, ["abc"], 8, fill=259), ValueError,
         "fill must be in [0, 258]", "got 259"),
    case("encode_rows/eos not a bool", lambda: encode_rows(BYTES, ["abc"], 8, fill=257, eos=1),
         ArgumentTypeError, "eos must be true or false", "got 1"),
    case("encode_rows/not a tokenizer", lambda: encode_rows("bytes", ["abc"], 8, fill=257),
         ArgumentTypeError, "tokenizer must have encode and decode", "'bytes'"),
    case("encode_rows/row too long", lambda: encode_rows(BYTES, ["abcdefgh"], 4, fill=257),
         ValueError, "example 0 needs 9 positions", "seq_len=4"),
]


CASES = LOSS_CASES + CHEM_CASES + TOKENIZER_CASES


@pytest.mark.parametrize("case", CASES)
def test_a_bad_argument_is_one_clear_error(case: Case):
  """The call raises `case.error` whose message holds every substring of `case.message`
  (the argument's name, the expected shape or range, and what was given)."""
  with pytest.raises(case.error) as error:
    case.call()
  missing = [part for part in case.message if part not in str(error.value)]
  assert not missing, f"{case.id}: {missing} not in {str(error.value)!r}"


def test_case_ids_are_unique():
  ids = [param.values[0].id for param in CASES]
  assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


# Under jax.jit: shapes, dtypes and options are still checked; values are data.
JIT_LOSSES = {
    "mdlm_loss": lambda x, key: losses.mdlm_loss(uniform, x, key, mask_id=MASK),
    "mdlm_discrete_loss": lambda x, key: losses.mdlm_discrete_loss(
        uniform, x, key, num_steps=4, mask_id=MASK, valid=jnp.ones(x.shape, bool)),
    "remdm_loss": lambda x, key: losses.remdm_loss(uniform, x, key, num_steps=4,
                                                   sigma_rule="rescale", eta=0.5,
                                                   mask_id=MASK),
    "classifier_loss": lambda x, key: losses.classifier_loss(classifier, x, LABELS, key,
                                                             mask_id=MASK, vocab_size=V),
    "ar_loss": lambda x, key: losses.ar_loss(causal, x),
    "nelbo": lambda x, key: losses.nelbo(uniform(x, None), x, x, jnp.ones(2), MASK),
    "autoregressive_nll": lambda x, key: losses.autoregressive_nll(causal(x), x),
}


@pytest.mark.parametrize("name", sorted(JIT_LOSSES))
def test_valid_inputs_give_the_same_loss_under_jit(name):
  """A valid call gives the same `[] float32` eagerly and under `jax.jit` (ids traced, so
  their values are not read); a wrong shape is still refused under the trace."""
  loss = JIT_LOSSES[name]
  eager, traced = loss(X, KEY), jax.jit(loss)(X, KEY)
  assert traced.dtype == jnp.float32 and traced.shape == ()
  np.testing.assert_allclose(float(traced), float(eager), rtol=1e-6)
  jax.jit(loss)(with_id((0, 0), V + 3), KEY)       # traced ids are data: not read, no error
  with pytest.raises(ValueError, match=r"x must have 2 dimensions \[B, L\], got shape \[3\]"):
    jax.jit(loss)(X[0], KEY)
  with pytest.raises(ArgumentTypeError, match="x must hold integer values"):
    jax.jit(loss)(X.astype(jnp.float32), KEY)


def test_traced_eta_and_options_under_jit():
  """eta as traced data is not range-checked (a sweep compiles once); num_steps and
  sigma_rule, static, are."""
  loss = jax.jit(lambda eta: losses.remdm_loss(uniform, X, KEY, num_steps=4, sigma_rule="cap",
                                               eta=eta, mask_id=MASK))
  assert np.isfinite(float(loss(0.1)))
  with pytest.raises(ValueError, match=r"num_steps must be in \[1, inf\), got 0"):
    jax.jit(lambda x: losses.mdlm_discrete_loss(uniform, x, KEY, num_steps=0, mask_id=MASK))(X)

"""remdm_jax: masked discrete diffusion (MDLM) and ReMDM remasking samplers in JAX.

The package is laid out in rooms (subpackages), each importing only what it needs:
`sampling` (the sampler, its configs, strategies, block decoding and particles;
`remdm_jax.particles` names the particle methods), `models` (Flax NNX
backbones), `weights` (model folders, released checkpoints, safetensors), `text`
(tokenizers), `data` (tensorflow-datasets pipelines), `training` (objectives and the loop),
`parallel` (multi-process runs, sharding, folder locks), `jobs` (sampling jobs and their
shards) and `eval` (metrics and reasoning scores), over a small shared core (the denoiser
type, diffusion math, schedules, guidance, validation, errors, and the registry of model
families, `remdm_jax.families`). `import remdm_jax` loads the sampler's names and registers
the built-in model families (the library's DiT folders and released LLaDA folders); it imports
no orbax, tensorflow-datasets, `tokenizers` or RDKit: `load_model` and `save_model` import the
checkpoint code (orbax) when first used.
"""

from remdm_jax import eval, families, particles
from remdm_jax.denoiser import Classifier, Denoiser
from remdm_jax.guidance import (Cbg, Cfg, Guidance, NoGuidance, classifier_free_guidance,
                                classifier_guidance)
from remdm_jax.sampling import trajectory
from remdm_jax.sampling.blocks import BlockPlan, BlockRule, BlockTable
from remdm_jax.sampling.config import BlockConfig, SamplerConfig, sampler_config
from remdm_jax.sampling.maskgit import MaskGitDecoderConfig
from remdm_jax.sampling.plan import Plan, StepRule, StepTable, build_plan, build_table
from remdm_jax.sampling.sampler import (NonFiniteLogitsError, Sampler, make_sampler, sample,
                                        sample_with_plan)
from remdm_jax.sampling.slots import QueueResult, SlotDecoder, make_slot_decoder
from remdm_jax.sampling.strategies import (STRATEGIES, Cap, Conf, Dfm, Fb, Loop, Mdlm, Rescale,
                                           Strategy, Topk)
from remdm_jax.sampling.topp import top_p_filter
from remdm_jax.sampling.trajectory import Trajectory
from remdm_jax.schedules import get_schedule, uniform_grid
from remdm_jax.training import losses
from remdm_jax.weights import families as _builtins  # noqa: F401  (registers "dit", "llada", "maskgit")

_WEIGHTS = ("load_model", "save_model")   # imported on first use: the checkpoint code needs orbax


def __getattr__(name: str):
  """`load_model` and `save_model` from `remdm_jax.weights.checkpoint`, imported when first
  asked for (PEP 562), so `import remdm_jax` does not import orbax."""
  if name in _WEIGHTS:
    from remdm_jax.weights import checkpoint
    return getattr(checkpoint, name)
  raise AttributeError(f"module 'remdm_jax' has no attribute {name!r}")


__all__ = [
    "BlockConfig", "BlockPlan", "BlockRule", "BlockTable", "Cap", "Cbg", "Cfg", "Classifier",
    "Conf", "Denoiser", "Dfm", "Fb", "Guidance", "Loop", "MaskGitDecoderConfig", "Mdlm",
    "NoGuidance",
    "NonFiniteLogitsError", "Plan", "QueueResult", "Rescale", "STRATEGIES", "Sampler",
    "SamplerConfig", "SlotDecoder", "StepRule", "StepTable", "Strategy", "Topk", "Trajectory",
    "build_plan", "build_table", "classifier_free_guidance", "classifier_guidance", "eval",
    "families", "get_schedule", "load_model", "losses", "make_sampler", "make_slot_decoder",
    "particles", "sample", "sample_with_plan",
    "sampler_config", "save_model", "top_p_filter", "trajectory", "uniform_grid",
]

"""remdm_jax: masked discrete diffusion (MDLM) and ReMDM remasking samplers in JAX."""

from remdm_jax import eval, losses, trajectory
from remdm_jax.blocks import BlockPlan, BlockRule, BlockTable
from remdm_jax.checkpoint import load_model, save_model
from remdm_jax.config import SamplerConfig, sampler_config
from remdm_jax.denoiser import Classifier, Denoiser
from remdm_jax.guidance import (Cbg, Cfg, Guidance, NoGuidance, classifier_free_guidance,
                                classifier_guidance)
from remdm_jax.plan import Plan, StepRule, StepTable, build_plan, build_table
from remdm_jax.sampling import (NonFiniteLogitsError, Sampler, make_sampler, sample,
                                sample_with_plan)
from remdm_jax.schedules import get_schedule, uniform_grid
from remdm_jax.strategies import (STRATEGIES, Cap, Conf, Dfm, Fb, Llada, Loop, Mdlm, Rescale,
                                  Strategy, Topk)
from remdm_jax.topp import top_p_filter
from remdm_jax.trajectory import Trajectory

__all__ = [
    "BlockPlan", "BlockRule", "BlockTable", "Cap", "Cbg", "Cfg", "Classifier", "Conf",
    "Denoiser", "Dfm", "Fb", "Guidance", "Llada", "Loop",
    "Mdlm", "NoGuidance", "NonFiniteLogitsError", "Plan", "Rescale",
    "STRATEGIES", "Sampler", "SamplerConfig", "StepRule", "StepTable", "Strategy", "Topk",
    "Trajectory", "build_plan", "build_table", "classifier_free_guidance", "classifier_guidance",
    "eval", "get_schedule", "load_model", "losses", "make_sampler", "sample", "sample_with_plan",
    "sampler_config", "save_model", "top_p_filter", "trajectory", "uniform_grid",
]

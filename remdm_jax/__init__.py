"""remdm_jax: masked discrete diffusion (MDLM) and ReMDM remasking samplers in JAX."""

from remdm_jax.checkpoint import load_model, save_model
from remdm_jax.config import SamplerConfig
from remdm_jax.guidance import classifier_free_guidance
from remdm_jax.sampling import NonFiniteLogitsError, sample, sample_with_plan
from remdm_jax.schedules import get_schedule, uniform_grid
from remdm_jax.strategies import STRATEGIES, Plan, StepRule, StepTable, build_plan, build_table
from remdm_jax.topp import top_p_filter

__all__ = [
    "NonFiniteLogitsError", "STRATEGIES", "Plan", "SamplerConfig", "StepRule", "StepTable", "build_plan",
    "build_table", "classifier_free_guidance", "get_schedule", "load_model", "sample",
    "sample_with_plan", "save_model", "top_p_filter", "uniform_grid",
]

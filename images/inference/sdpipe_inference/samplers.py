"""AUTOMATIC1111 sampler and schedule-type names mapped to diffusers schedulers."""

from __future__ import annotations

from typing import Any

# A1111 name -> (diffusers scheduler class, extra config). Follows the equivalence table in the
# diffusers documentation ("A1111/k-diffusion" column).
SAMPLER_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
SCHEDULE_OPTIONS: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}


def make_scheduler(base_config: Any, sampler: str, schedule: str) -> Any:
    """A scheduler for ``sampler``/``schedule`` built on a checkpoint's scheduler config."""
    import diffusers

    class_name, options = SAMPLER_SCHEDULERS[sampler]
    cls = getattr(diffusers, class_name)
    extra = dict(options)
    for key, value in SCHEDULE_OPTIONS[schedule].items():
        if key in cls.__init__.__code__.co_varnames:  # not every scheduler takes every option
            extra[key] = value
    return cls.from_config(base_config, **extra)

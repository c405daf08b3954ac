"""mathjax_sft: JAX/Flax SFT trainer and Pass@N sampler for LLaMA-family math models."""

__version__ = "0.1.0"

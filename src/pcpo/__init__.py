"""pcpo: Proportionate Credit Policy Optimization for text-to-image diffusion and flow models."""

__version__ = "0.1.0"

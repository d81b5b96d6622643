"""Model adapters. ``load_model(spec)`` builds one from a config section; families live in
``pcpo.models.loader.MODEL_FAMILIES`` (a name → factory dict; add toy families there)."""

from .loader import MODEL_FAMILIES, load_model, register_model_family

__all__ = ["MODEL_FAMILIES", "load_model", "register_model_family"]

"""``load_model(spec)``: a config section ``model: {family, path, ...}`` → a :class:`ModelAdapter`.

``MODEL_FAMILIES`` is a plain name → factory table. A factory is either a callable ``factory(spec) ->
ModelAdapter`` or a ``"module:attribute"`` string resolved on first use (so importing this module pulls in
neither diffusers nor the toy world). To add a family, add one line here or call
:func:`register_model_family` from your module.

NOTE for the toy world: register ``toy-flow`` / ``toy-ddpm`` by adding their lines below (pointing at a
``from_spec``-style function in ``pcpo.models.toy``), keeping this a simple dict.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import ModelAdapter

ModelFactory = Callable[[dict], ModelAdapter]

MODEL_FAMILIES: dict[str, ModelFactory | str] = {
    # real diffusers pipelines (pcpo.models.sd / sd3 / flux)
    "sd": "pcpo.models.sd:SDAdapter.from_spec",
    "sdxl": "pcpo.models.sd:SDXLAdapter.from_spec",
    "sd3": "pcpo.models.sd3:SD3Adapter.from_spec",
    "flux": "pcpo.models.flux:FluxAdapter.from_spec",
    # embedded toy world (pcpo.models.toy)
    "toy-flow": "pcpo.models.toy:ToyFlowAdapter.from_spec",
    "toy-ddpm": "pcpo.models.toy:ToyDDPMAdapter.from_spec",
}

FAMILY_ALIASES = {"sd1": "sd", "sd15": "sd", "sd2": "sd", "sd35": "sd3", "flux1": "flux"}


def register_model_family(name: str, factory: ModelFactory | str) -> None:
    """Add ``name`` → ``factory`` to :data:`MODEL_FAMILIES` (re-registering the same factory is a no-op)."""
    if name in MODEL_FAMILIES and MODEL_FAMILIES[name] != factory:
        raise ValueError(f"model family {name!r} is registered twice")
    MODEL_FAMILIES[name] = factory


def _resolve(factory: ModelFactory | str) -> ModelFactory:
    if callable(factory):
        return factory
    module, _, attr = factory.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_model(spec: dict) -> ModelAdapter:
    """Build the adapter described by ``spec`` (``family`` picks the factory; the rest is its options)."""
    if not isinstance(spec, dict) or "family" not in spec:
        raise ValueError(f"model.family: give one of {sorted(MODEL_FAMILIES)}, e.g. model: {{family: sd3, path: ...}}")
    family = FAMILY_ALIASES.get(spec["family"], spec["family"])
    if family not in MODEL_FAMILIES:
        raise ValueError(f"model.family: unknown family {spec['family']!r}; choose one of {sorted(MODEL_FAMILIES)}")
    return _resolve(MODEL_FAMILIES[family])({**spec, "family": family})

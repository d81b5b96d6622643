"""Session-scoped fixtures: tiny random diffusers pipelines of every family, saved once with
``save_pretrained`` and loaded back through the real ``from_pretrained`` path (``HF_HUB_OFFLINE=1``).

Imported by ``tests/conftest.py`` so every test module shares one build per family.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

REAL_FAMILIES = ("sd", "sdxl", "sd3", "flux")


class TinyPipelines:
    """Builds (once) and returns the directory of the tiny pipeline of a family/variant."""

    def __init__(self, root):
        self.root = root
        self._dirs: dict[tuple[str, str], str] = {}

    def __call__(self, family: str, prediction_type: str = "epsilon") -> str:
        key = (family, prediction_type)
        if key not in self._dirs:
            from pcpo.models.tiny import save_tiny_pipeline

            d = os.path.join(str(self.root), f"{family}-{prediction_type}")
            self._dirs[key] = save_tiny_pipeline(family, d, prediction_type=prediction_type)
        return self._dirs[key]

    def spec(self, family: str, prediction_type: str = "epsilon", **overrides) -> dict:
        """A ``load_model`` spec for the tiny pipeline (32×32, 16-token prompts, CPU)."""
        from pcpo.models.tiny import TINY_SPEC_DEFAULTS

        return {"family": family, "path": self(family, prediction_type), "device": "cpu",
                **TINY_SPEC_DEFAULTS[family], **overrides}


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory) -> TinyPipelines:
    return TinyPipelines(tmp_path_factory.mktemp("tiny_pipelines"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> str:
    """A tiny random ``CLIPModel`` + tokenizer saved with ``save_pretrained`` (for reward tests)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from pcpo.models.tiny import tiny_clip_tokenizer

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=tok.model_max_length,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    d = str(tmp_path_factory.mktemp("tiny_clip"))
    CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d

"""The embedded text-to-image world: everything needed to run RL on two CPU cores with no downloads.

* :mod:`pcpo.world.data`: procedural 32x32 images of one coloured shape (8 colours x 4 shapes = 32
  prompts, a fixed 8-prompt evaluation subset, a fixed real reference set).
* :mod:`pcpo.world.tokenizer`: CLIP's BPE truncated to 2000 merges, loaded with ``transformers.CLIPTokenizer``.
* :mod:`pcpo.world.classifier`: the ~63 K-param prompt classifier (alignment reward, gold metrics).
* :mod:`pcpo.world.nets` / :mod:`pcpo.world.pretrain`: the toy MMDiT models and ``pcpo pretrain-toy``.
* Adapters: :mod:`pcpo.models.toy`; rewards: :mod:`pcpo.rewards.world`; metrics: :mod:`pcpo.world.metrics`.

Rebuilding the shipped assets (see each module for details)::

    python -m pcpo.world.tokenizer /path/to/bpe_simple_vocab_16e6.txt.gz   # from the open_clip_torch wheel
    python -m pcpo.world.classifier                                          # ~1-2 min on 2 idle cores
    pcpo pretrain-toy --model flow   (and --model ddpm)                      # see config.json "rebuild"
"""

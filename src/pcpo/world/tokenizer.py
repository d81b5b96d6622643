"""The embedded world's tokenizer: OpenAI CLIP's byte-level BPE, truncated to its first 2000 merges.

Why: the toy text encoders need a real CLIP tokenizer (so the code path is the one SD/SD3/FLUX use) but
no model hub is reachable, and the full 49,408-token vocabulary would make the tiny text encoder's
embedding table dominate its parameters. The first ``N`` merges of ``bpe_simple_vocab_16e6.txt.gz``
(MIT, shipped in the ``open_clip_torch`` wheel) give a consistent smaller vocabulary:
256 byte symbols + the same with ``</w>`` + one token per merge + ``<|startoftext|>``, ``<|endoftext|>``
(N = 2000 -> 2514 tokens). Only the derived ``vocab.json``/``merges.txt`` are shipped.

Rebuild (deterministic)::

    pip download --no-deps open_clip_torch -d /tmp/x && cd /tmp/x && unzip -o open_clip_torch*.whl \
        'open_clip/bpe_simple_vocab_16e6.txt.gz'
    python -m pcpo.world.tokenizer /tmp/x/open_clip/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import functools
import gzip
import json
import sys
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"
NUM_MERGES = 2000
MAX_LENGTH = 10  # longest world prompt ("a magenta triangle") is 9 tokens with BOS/EOS


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode map (the order defines the first 256 ids)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tokenizer_files(
    bpe_gz: str | Path, out_dir: str | Path = TOKENIZER_DIR, num_merges: int = NUM_MERGES
) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for the first ``num_merges`` merges of CLIP's BPE file."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : num_merges + 1]]
    if len(merges) != num_merges or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_gz}: not a CLIP BPE merges file (bpe_simple_vocab_16e6.txt.gz)")
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return out


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str | Path = TOKENIZER_DIR):
    """The world's ``transformers.CLIPTokenizer`` (vocab 2514, pad = ``<|endoftext|>``)."""
    from transformers import CLIPTokenizer

    path = Path(path)
    for f in ("vocab.json", "merges.txt"):
        if not (path / f).is_file():
            raise FileNotFoundError(
                f"tokenizer file {path / f} is missing; rebuild it with `python -m pcpo.world.tokenizer "
                "<bpe_simple_vocab_16e6.txt.gz>`"
            )
    # from_pretrained on a local folder works across transformers 4.x (slow/fast) and 5.x (tokenizers backend).
    return CLIPTokenizer.from_pretrained(str(path), model_max_length=MAX_LENGTH, local_files_only=True)


def tokenize(prompts, max_length: int = MAX_LENGTH):
    """Token ids ``[B, max_length]`` (long), padded with ``<|endoftext|>`` and truncated."""
    tok = load_tokenizer()
    return tok(
        list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m pcpo.world.tokenizer <path/to/bpe_simple_vocab_16e6.txt.gz>")
    print(build_tokenizer_files(sys.argv[1]))

"""Prompt sets: the prompts a run trains and evaluates on, with optional per-prompt metadata.

:func:`load_prompts` turns a config value (``data.prompts``, ``data.eval_prompts``) into a
:class:`PromptSet`. Every mistake raises :class:`~pcpo.errors.ConfigError` with one line naming the
config field and the file; nothing is ever downloaded.

Spec forms
----------
A **list** of strings
    the prompts themselves (``[cat, dog]``).
``world:train`` | ``world:heldout`` | ``world:all``
    the embedded world's prompts (:mod:`pcpo.world.data`).
``ddpo:NAME``
    DDPO's prompt functions (ddpo-pytorch ``prompts.py``), with their word lists shipped in
    ``pcpo/assets/prompts/``. DDPO draws one prompt uniformly at random per sample; here each function
    is expanded to the **fixed, complete list** it draws from (no seed involved), so sampling prompts
    uniformly from the set is the same distribution and a run is reproducible:

    * ``ddpo:simple_animals``: the 45 animals of ``simple_animals.txt`` (``cat``, ``dog``, ...);
      DDPO's ``aesthetic`` config.
    * ``ddpo:nouns_activities``: every animal x activity combination, ``"{a|an} {animal}
      {activity}"``, 45 x 3 = 135 prompts in animal-major order (``"a cat washing the dishes"``,
      ``"an ant riding a bike"``); DDPO's ``prompt_image_alignment`` config (``nouns_file:
      simple_animals.txt``, ``activities_file: activities.txt``).
    * ``ddpo:imagenet_animals`` (the first 398 ImageNet classes; DDPO's ``compressibility`` and
      ``incompressibility`` configs), ``ddpo:imagenet_dogs`` (classes 151-268, 118 prompts),
      ``ddpo:imagenet_all`` (1000); a prompt is the whole class line, e.g. ``"tench, Tinca tinca"``.
A **file** ``PATH`` or ``PATH#FIELD``
    (relative paths are relative to the working directory); the format follows the extension:

    * ``.txt`` (and any unknown extension): one prompt per line, surrounding whitespace stripped,
      blank lines skipped.
    * ``.jsonl``/``.ndjson``: one JSON object (or string) per line; the prompt is ``FIELD`` (default
      ``prompt``) and the object's other keys are the prompt's metadata. GenEval's
      ``evaluation_metadata.jsonl`` and Flow-GRPO's ``*_metadata.jsonl`` load as they are, with
      ``tag``, ``include``, ``exclude``, ... kept.
    * ``.json``: a list of strings or of objects (as in ``.jsonl``).
    * ``.csv``/``.tsv``: a table with a header row; the prompt is column ``FIELD`` (default ``prompt``),
      the other columns are metadata (PartiPrompts: ``PartiPrompts.tsv#Prompt``; DrawBench:
      ``drawbench.csv#Prompts``).
    * ``.parquet``/``.arrow`` files and directories written by ``datasets.save_to_disk`` are read with
      Hugging Face ``datasets`` (as ``hf:``).

    If ``FIELD`` is not a column, a column equal to it up to case is used (``prompt`` finds
    ``Prompt``).
``hf:NAME_OR_PATH[#COLUMN][@SPLIT]``
    a Hugging Face ``datasets`` dataset (optional dependency: ``pip install datasets``): a directory
    written by ``save_to_disk`` (``load_from_disk``), a local data file (``.parquet``, ``.arrow``,
    ``.csv``, ``.tsv``, ``.json``, ``.jsonl``), or a hub name already in the local
    ``datasets`` cache (read offline, e.g. ``hf:nateraw/parti-prompts#Prompt@train``). ``COLUMN``
    defaults to ``prompt``; ``SPLIT`` may be left out when the dataset has a single split. Other
    columns become metadata, except image, audio and binary columns.
A **mapping** ``{path: ..., field: ..., split: ..., format: ..., limit: ...}``
    the explicit form for YAML configs. ``path`` is taken literally (no ``#``/``@`` parsing) and may
    also be ``hf:NAME``, ``world:SPLIT`` or ``ddpo:NAME``; ``format`` (``txt``, ``jsonl``, ``json``,
    ``csv``, ``tsv``, ``hf``) overrides the extension; ``limit: N`` keeps the first N prompts.

Duplicate prompts are kept (they weigh more when prompts are drawn from the set);
:meth:`PromptSet.metadata_for` returns the metadata of a prompt's first occurrence.

When a missing file is one of the reference setups' prompt files (Flow-GRPO's ``dataset/pickscore``,
``dataset/geneval``, ``dataset/ocr``; DanceGRPO's HPDv2 prompts; GenEval, DrawBench, PartiPrompts), the
error says where it comes from and where to put it (:data:`KNOWN_FILES`).
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["KNOWN_FILES", "DDPO_FUNCTIONS", "PromptSet", "load_prompts", "known_file_origin"]

PROMPT_ASSETS = Path(__file__).resolve().parent / "assets" / "prompts"

DEFAULT_FIELD = "prompt"
MAPPING_KEYS = ("path", "field", "split", "format", "limit")
FORMATS = ("txt", "jsonl", "json", "csv", "tsv", "hf")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
                   ".parquet": "hf", ".arrow": "hf"}
_SPEC_FORMS = "a list of prompts, world:<split>, ddpo:<name>, hf:<dataset>, a file path or {path: ...}"

_FLOW_GRPO = "the Flow-GRPO repository (yifan123/flow_grpo)"
#: known reference prompt files: (path patterns, what the file is, where to get it). Patterns are
#: matched (fnmatch, lower case) against the path as given; the missing-file error quotes the other two
#: (``{name}`` in the source stands for the file's name).
KNOWN_FILES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("*dataset/pickscore/train.txt",), "Flow-GRPO's PickScore training prompts (unique Pick-a-Pic v1 captions)",
     f"dataset/pickscore/train.txt of {_FLOW_GRPO}"),
    (("*dataset/pickscore/test.txt",), "Flow-GRPO's PickScore evaluation prompts (2048 Pick-a-Pic v1 captions)",
     f"dataset/pickscore/test.txt of {_FLOW_GRPO}"),
    (("*dataset/geneval/train_metadata.jsonl",), "Flow-GRPO's GenEval training prompts with their metadata",
     f"dataset/geneval/train_metadata.jsonl of {_FLOW_GRPO}"),
    (("*dataset/geneval/test_metadata.jsonl",), "Flow-GRPO's GenEval evaluation prompts with their metadata",
     f"dataset/geneval/test_metadata.jsonl of {_FLOW_GRPO}"),
    (("*dataset/ocr/train.txt",), "Flow-GRPO's text-rendering (OCR) training prompts",
     f"dataset/ocr/train.txt of {_FLOW_GRPO}"),
    (("*dataset/ocr/test.txt",), "Flow-GRPO's text-rendering (OCR) evaluation prompts",
     f"dataset/ocr/test.txt of {_FLOW_GRPO}"),
    (("*evaluation_metadata.jsonl",), "the GenEval benchmark's 553 prompts with their metadata",
     "prompts/evaluation_metadata.jsonl of the GenEval repository (djghosh13/geneval)"),
    (("*dataset/hpdv2/prompts.txt", "*hpd*_train.txt"),
     "DanceGRPO's training prompts (from the HPDv2 human preference dataset)",
     "assets/prompts.txt of the DanceGRPO repository (XueZeyue/DanceGRPO)"),
    (("*hpdv2/benchmark/*.json",), "an HPDv2 benchmark prompt list (anime, concept-art, paintings or photo; "
     "800 prompts each, a JSON list of strings)",
     "benchmark/{name} of the HPDv2 dataset on the Hugging Face Hub (zhwang/HPDv2; hpsv2.benchmark_prompts "
     "reads the same files)"),
    (("*drawbench*",), "DrawBench (Imagen, Saharia et al. 2022; 200 prompts in 11 categories, columns "
     "Prompts and Category)",
     "the DrawBench prompt table released with Imagen (a CSV; also the Hugging Face dataset "
     "sayakpaul/drawbench, usable as hf:sayakpaul/drawbench#Prompts@train once cached)"),
    (("*partiprompts*", "*parti_prompts*", "*parti-prompts*"),
     "PartiPrompts (Parti, Yu et al. 2022; about 1600 prompts, columns Prompt, Category, Challenge, Note)",
     "PartiPrompts.tsv of the Parti repository (google-research/parti); also the Hugging Face dataset "
     "nateraw/parti-prompts, usable as hf:nateraw/parti-prompts#Prompt@train once cached"),
)


def known_file_origin(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(what the file is, where to get it)`` when ``path`` names a known reference prompt file."""
    p = Path(path).as_posix().lower()
    for patterns, what, where in KNOWN_FILES:
        if any(fnmatch.fnmatchcase(p, pat) for pat in patterns):
            return what, where.replace("{name}", Path(path).name)
    return None


# ----------------------------------------------------------------------------- the prompt set


@dataclass(frozen=True)
class PromptSet:
    """Prompts with optional per-prompt metadata (one dict per prompt, e.g. GenEval's ``tag`` and
    ``include``; ``None`` when the source carries nothing besides the prompts) and a description of
    where they came from. Behaves as a read-only sequence of the prompt strings."""

    prompts: list[str]
    metadata: list[dict] | None = None
    source: str = "list"
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.metadata is not None and len(self.metadata) != len(self.prompts):
            raise ValueError(f"{self.source}: {len(self.metadata)} metadata entries for {len(self.prompts)} prompts")
        for i, p in enumerate(self.prompts):
            self._index.setdefault(p, i)

    def metadata_for(self, prompts: Sequence[str]) -> list[dict] | None:
        """The metadata of each prompt of a batch (its first occurrence in the set), or ``None`` when
        the set has no metadata. A prompt that is not in the set raises ``KeyError``."""
        if self.metadata is None:
            return None
        out = []
        for p in prompts:
            i = self._index.get(p)
            if i is None:
                raise KeyError(f"prompt {p!r} is not in the prompt set {self.source}")
            out.append(self.metadata[i])
        return out

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.prompts)

    def __getitem__(self, i):
        return self.prompts[i]

    def __contains__(self, prompt) -> bool:
        return prompt in self._index


# ----------------------------------------------------------------------------- entry point


def load_prompts(spec: Any, field: str) -> PromptSet:
    """The :class:`PromptSet` a spec describes (see the module docstring for the forms); ``field`` is
    the config key being resolved (``"data.prompts"``) and starts every error message."""
    if isinstance(spec, PromptSet):
        return spec
    if isinstance(spec, Mapping):
        unknown = sorted(set(map(str, spec)) - set(MAPPING_KEYS))
        if unknown:
            raise ConfigError(f"{field}.{unknown[0]}: unknown key; valid keys: {', '.join(MAPPING_KEYS)}")
        path = spec.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"{field}.path: a file, directory, hf:<dataset>, world:<split> or ddpo:<name> "
                              f"is required, got {path!r}")
        for key in ("field", "split", "format"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                raise ConfigError(f"{field}.{key}: must be a string, got {spec[key]!r}")
        fmt = spec.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise ConfigError(f"{field}.format: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        limit = spec.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"{field}.limit: must be a positive integer, got {limit!r}")
        ps = _load_string(path.strip(), field, spec.get("field"), spec.get("split"), fmt, literal=True)
        if limit is not None and limit < len(ps):
            ps = PromptSet(ps.prompts[:limit], None if ps.metadata is None else ps.metadata[:limit],
                           f"{ps.source} (first {limit})")
        return ps
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ConfigError(f"{field}: the prompt list is empty")
        for i, p in enumerate(spec):
            if not isinstance(p, str):
                raise ConfigError(f"{field}: item {i} of the prompt list is {type(p).__name__} ({p!r}), not text")
            if not p.strip():
                raise ConfigError(f"{field}: item {i} of the prompt list is an empty prompt")
        return PromptSet(list(spec), None, "list")
    if isinstance(spec, str) and spec.strip():
        return _load_string(spec.strip(), field, None, None, None, literal=False)
    raise ConfigError(f"{field}: expected {_SPEC_FORMS}; got {spec!r} ({type(spec).__name__})")


def _load_string(spec: str, field: str, key: str | None, split: str | None, fmt: str | None,
                 literal: bool) -> PromptSet:
    if spec.startswith(("world:", "ddpo:")):
        given = [k for k, v in (("field", key), ("split", split), ("format", fmt)) if v is not None]
        if given:
            raise ConfigError(f"{field}.{given[0]}: does not apply to {spec} (a built-in prompt list)")
        if spec.startswith("world:"):
            return _world(spec[len("world:"):], field)
        return _ddpo(spec[len("ddpo:"):], field)
    if spec.startswith("hf:"):
        target = spec[len("hf:"):]
        if not literal:
            target, key, split = _split_suffixes(target, allow_split=True)
        if not target:
            raise ConfigError(f"{field}: {spec!r} names no dataset; use hf:NAME_OR_PATH[#COLUMN][@SPLIT]")
        return _hf(target, key, split, field)
    path = spec
    if not literal and not Path(path).exists() and "#" in path:
        path, key, _ = _split_suffixes(path, allow_split=False)
    return _file(Path(path), key, split, fmt, field)


def _split_suffixes(text: str, allow_split: bool) -> tuple[str, str | None, str | None]:
    split = key = None
    if allow_split and "@" in text.rsplit("/", 1)[-1]:
        text, split = text.rsplit("@", 1)
        if "#" in split:  # NAME@SPLIT#COLUMN
            split, key = split.split("#", 1)
    if "#" in text:
        text, key = text.rsplit("#", 1)
    return text, (key or None), (split or None)


# ----------------------------------------------------------------------------- built-in sources


def _world(split: str, field: str) -> PromptSet:
    from .world import data as world

    table = {"train": world.TRAIN_PROMPTS, "heldout": world.HELDOUT_PROMPTS, "all": world.PROMPTS}
    if split not in table:
        raise ConfigError(f"{field}: unknown world split {split!r}; use world:train, world:heldout or world:all")
    return PromptSet(list(table[split]), None, f"world:{split}")


def _asset_lines(name: str) -> list[str]:
    return [ln.strip() for ln in (PROMPT_ASSETS / name).read_text(encoding="utf-8").splitlines() if ln.strip()]


def _indefinite(word: str) -> str:
    """DDPO's ``inflect.a`` for its shipped nouns (all begin with their pronounced letter)."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _nouns_activities() -> list[str]:
    return [f"{_indefinite(n)} {a}" for n in _asset_lines("simple_animals.txt") for a in _asset_lines("activities.txt")]


#: ``ddpo:NAME`` -> the complete prompt list DDPO's function of that name draws from.
DDPO_FUNCTIONS = {
    "simple_animals": lambda: _asset_lines("simple_animals.txt"),
    "nouns_activities": _nouns_activities,
    "imagenet_all": lambda: _asset_lines("imagenet_classes.txt"),
    "imagenet_animals": lambda: _asset_lines("imagenet_classes.txt")[0:398],
    "imagenet_dogs": lambda: _asset_lines("imagenet_classes.txt")[151:269],
}


def _ddpo(name: str, field: str) -> PromptSet:
    if name not in DDPO_FUNCTIONS:
        raise ConfigError(f"{field}: unknown DDPO prompt function {name!r}; available: "
                          f"{', '.join('ddpo:' + n for n in DDPO_FUNCTIONS)}")
    return PromptSet(DDPO_FUNCTIONS[name](), None, f"ddpo:{name}")


# ----------------------------------------------------------------------------- files


def _missing(path: Path, field: str, what: str = "prompt file") -> ConfigError:
    where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    origin = known_file_origin(path)
    if origin is not None:
        desc, source = origin
        return ConfigError(f"{field}: {what} {path} not found{where}; it is {desc}: get it from {source} "
                           f"and put it at {path}")
    return ConfigError(f"{field}: {what} {path} not found{where}; check the path (other forms: a list of prompts, "
                       f"world:<split>, ddpo:<name>, hf:<dataset>)")


def _file(path: Path, key: str | None, split: str | None, fmt: str | None, field: str) -> PromptSet:
    if not path.exists():
        raise _missing(path, field)
    if fmt is None:
        fmt = "hf" if path.is_dir() else _SUFFIX_FORMATS.get(path.suffix.lower(), "txt")
    if fmt == "hf":
        return _hf(str(path), key, split, field)
    if path.is_dir():
        raise ConfigError(f"{field}: {path} is a directory; give a prompt file, or a directory written by "
                          f"datasets.save_to_disk")
    if split is not None:
        raise ConfigError(f"{field}: {path}: a split ({split!r}) applies to Hugging Face datasets only")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{field}: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ConfigError(f"{field}: {path} is empty; it must hold at least one prompt")
    if fmt == "txt":
        if key is not None:
            raise ConfigError(f"{field}: {path} is a text file (one prompt per line) and has no field {key!r}; "
                              f"use .jsonl, .json, .csv or .tsv for fields")
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return PromptSet(prompts, None, str(path))
    if fmt == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{field}: {path} line {n} is not valid JSON ({e.msg})") from None
        return _records(rows, key, path, field)
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{field}: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise ConfigError(f"{field}: {path} holds a JSON {type(data).__name__}; expected a list of prompts "
                              f"(strings, or objects with a {key or DEFAULT_FIELD!r} field)")
        if not data:
            raise ConfigError(f"{field}: {path} is an empty list; it must hold at least one prompt")
        return _records([(f"item {i}", r) for i, r in enumerate(data)], key, path, field)
    return _table(text, "\t" if fmt == "tsv" else ",", key, path, field)


def _resolve_key(key: str | None, available: Sequence[str], where: str, field: str, kind: str) -> str:
    """``key`` (default ``prompt``) if available, else the one name equal to it up to case."""
    want = key or DEFAULT_FIELD
    if want in available:
        return want
    folded = [c for c in available if c.lower() == want.lower()]
    if len(folded) == 1:
        return folded[0]
    raise ConfigError(f"{field}: {where} has no {kind} {want!r}; available: {', '.join(map(str, available)) or 'none'}"
                      f" (choose one with PATH#NAME or {{path: ..., field: NAME}})")


def _check_text(value, where: str, col: str, path, field: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{field}: {path} {where}: {col!r} is {type(value).__name__} ({value!r:.60}), not text")
    if not value.strip():
        raise ConfigError(f"{field}: {path} {where}: {col!r} is an empty prompt")
    return value


def _records(rows: list[tuple[str, Any]], key: str | None, path: Path, field: str) -> PromptSet:
    """JSON values: strings are prompts, objects carry the prompt under ``key`` and metadata."""
    if not rows:
        raise ConfigError(f"{field}: {path} is empty; it must hold at least one prompt")
    col = None
    prompts, metadata = [], []
    for where, row in rows:
        if isinstance(row, str):
            if key is not None:
                raise ConfigError(f"{field}: {path} {where} is a string, not an object with field {key!r}")
            prompts.append(_check_text(row, where, DEFAULT_FIELD, path, field))
            metadata.append({})
            continue
        if not isinstance(row, dict):
            raise ConfigError(f"{field}: {path} {where} is {type(row).__name__} ({row!r:.60}); expected a prompt "
                              f"string or an object with a {key or DEFAULT_FIELD!r} field")
        c = col if col is not None and col in row else _resolve_key(key, list(row), f"{path} {where}", field, "field")
        col = c
        prompts.append(_check_text(row[c], where, c, path, field))
        metadata.append({k: v for k, v in row.items() if k != c})
    return PromptSet(prompts, metadata if any(metadata) else None, str(path) + (f"#{col}" if col else ""))


def _table(text: str, delimiter: str, key: str | None, path: Path, field: str) -> PromptSet:
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    columns = reader.fieldnames or []
    col = _resolve_key(key, columns, str(path), field, "column")
    prompts, metadata = [], []
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            raise ConfigError(f"{field}: {path} {where} has more cells than the header's {len(columns)} columns")
        prompts.append(_check_text(row[col], where, col, path, field))
        metadata.append({k: v for k, v in row.items() if k != col})
    if not prompts:
        raise ConfigError(f"{field}: {path} has a header but no rows; it must hold at least one prompt")
    return PromptSet(prompts, metadata if any(metadata) else None, f"{path}#{col}")


# ----------------------------------------------------------------------------- Hugging Face datasets


def _datasets(field: str):
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{field}: Hugging Face datasets are read with the optional package datasets: "
                          f"pip install datasets") from None
    return datasets


@contextlib.contextmanager
def _hub_offline(datasets):
    """No network while resolving a dataset name: only the local ``datasets`` cache is read."""
    import huggingface_hub.constants as hub_constants

    old = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = old


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_HF_BUILDERS = {".parquet": ("parquet", {}), ".arrow": ("arrow", {}), ".csv": ("csv", {}),
                ".tsv": ("csv", {"delimiter": "\t"}), ".json": ("json", {}), ".jsonl": ("json", {}),
                ".ndjson": ("json", {})}


def _hf(target: str, key: str | None, split: str | None, field: str) -> PromptSet:
    datasets = _datasets(field)
    path = Path(target)
    label = f"hf:{target}"
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise ConfigError(f"{field}: {path} is not a directory written by datasets.save_to_disk ({e})") from None
        except Exception as e:  # noqa: BLE001  (datasets fails on some saved directories, e.g. zero rows)
            raise ConfigError(f"{field}: {label}: datasets could not load this save_to_disk directory "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check that it is "
                              f"complete and holds at least one row") from None
    elif path.is_file():
        builder = _HF_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ConfigError(f"{field}: {path}: hf: reads {', '.join(_HF_BUILDERS)} files or save_to_disk "
                              f"directories; give a text file (one prompt per line) without hf:")
        try:
            ds = datasets.load_dataset(builder[0], data_files=str(path), **builder[1])
        except Exception as e:  # noqa: BLE001  (any parse error: one line naming the file)
            raise ConfigError(f"{field}: {path}: datasets could not read it ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); check that it is complete and holds "
                              f"at least one row") from None
    elif not _HUB_NAME.fullmatch(target) or path.suffix.lower() in _HF_BUILDERS:
        raise _missing(path, field, "dataset path")
    else:
        try:
            with _hub_offline(datasets):
                ds = datasets.load_dataset(target)
        except Exception as e:  # noqa: BLE001  (not cached, or unreadable: one line)
            raise ConfigError(f"{field}: Hugging Face dataset {target!r} is neither a local path nor in the local "
                              f"datasets cache ({datasets.config.HF_DATASETS_CACHE}); pcpo does not download: "
                              f"run datasets.load_dataset({target!r}) once where the hub is reachable, or "
                              f"save_to_disk it and give that directory ({type(e).__name__})") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if split is None:
            if len(splits) != 1:
                raise ConfigError(f"{field}: {label} has splits {', '.join(splits)}; choose one with "
                                  f"{label}@SPLIT or {{path: ..., split: SPLIT}}")
            split = splits[0]
        if split not in ds:
            raise ConfigError(f"{field}: {label} has no split {split!r}; available: {', '.join(splits)}")
        ds = ds[split]
    elif split is not None and str(ds.split) != split:
        held = "one dataset without splits" if ds.split is None else f"only the split {str(ds.split)!r}"
        raise ConfigError(f"{field}: {label} holds {held}, not split {split!r}; leave the split out")
    if len(ds) == 0:
        raise ConfigError(f"{field}: {label} has no rows; it must hold at least one prompt")
    col = _resolve_key(key, list(ds.column_names), label, field, "column")
    prompts = [_check_text(v, f"row {i}", col, label, field) for i, v in enumerate(ds[col])]
    keep = [c for c, feat in ds.features.items() if c != col and not _is_binary(datasets, feat)]
    metadata = ds.select_columns(keep).to_list() if keep else None
    return PromptSet(prompts, metadata, f"{label}#{col}" + (f"@{split}" if split else ""))


def _is_binary(datasets, feature) -> bool:
    kinds = tuple(getattr(datasets, n) for n in ("Image", "Audio", "Video", "Pdf") if hasattr(datasets, n))
    if isinstance(feature, kinds):
        return True
    return isinstance(feature, datasets.Value) and "binary" in feature.dtype

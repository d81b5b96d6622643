"""Prompt sets (pcpo.prompts): every source, DDPO's prompt functions, one-line errors, the real configs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from pcpo.errors import ConfigError
from pcpo.prompts import PromptSet, known_file_origin, load_prompts
from pcpo.trainer.config import CONFIG_DIR, load_config
from pcpo.world import data as world

FIELD = "data.prompts"

# Two rows in the format of GenEval's evaluation_metadata.jsonl (and Flow-GRPO's dataset/geneval/*_metadata.jsonl).
GENEVAL_ROWS = [
    {"tag": "counting", "include": [{"class": "wine glass", "count": 2}],
     "exclude": [{"class": "wine glass", "count": 3}], "prompt": "a photo of two wine glasses"},
    {"tag": "color_attr", "include": [{"class": "handbag", "count": 1, "color": "pink"},
                                      {"class": "scissors", "count": 1, "color": "black"}],
     "prompt": "a photo of a pink handbag and a black scissors"},
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error(spec, field: str = FIELD) -> str:
    with pytest.raises(ConfigError) as e:
        load_prompts(spec, field)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{field}"), msg
    return msg


# ----------------------------------------------------------------------------- sources


def test_list_and_world_splits():
    ps = load_prompts(["a cat", "a dog"], FIELD)
    assert ps.prompts == ["a cat", "a dog"] and ps.metadata is None and ps.source == "list"
    assert list(load_prompts("world:train", FIELD)) == list(world.TRAIN_PROMPTS)
    assert load_prompts("world:heldout", FIELD).prompts == list(world.HELDOUT_PROMPTS)
    full = load_prompts("world:all", FIELD)
    assert len(full) == 32 and full[0] == "a red circle" and full[31] == "a white cross"


def test_text_file_one_prompt_per_line(tmp_path):
    p = write(tmp_path / "p.txt", "a red fox\n\n   a cat on a mat  \r\nA sign that says \"OPEN\"\n")
    ps = load_prompts(str(p), FIELD)
    assert ps.prompts == ["a red fox", "a cat on a mat", 'A sign that says "OPEN"']
    assert ps.metadata is None and ps.metadata_for(["a red fox"]) is None


def test_jsonl_field_and_metadata(tmp_path):
    rows = [{"caption": "a cat", "id": 7}, {"caption": "a dog", "id": 8}]
    p = write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ps = load_prompts(f"{p}#caption", FIELD)
    assert ps.prompts == ["a cat", "a dog"] and ps.metadata == [{"id": 7}, {"id": 8}]
    assert load_prompts({"path": str(p), "field": "caption"}, FIELD).prompts == ["a cat", "a dog"]
    only = write(tmp_path / "only.jsonl", '{"prompt": "x y"}\n"a string row"\n')
    assert load_prompts(str(only), FIELD).prompts == ["x y", "a string row"]
    assert load_prompts(str(only), FIELD).metadata is None  # nothing besides the prompts


def test_json_lists_of_strings_and_objects(tmp_path):
    strings = write(tmp_path / "photo.json", json.dumps(["a lighthouse at dusk", "a bowl of ramen"]))
    ps = load_prompts(str(strings), FIELD)
    assert ps.prompts == ["a lighthouse at dusk", "a bowl of ramen"] and ps.metadata is None
    objects = write(tmp_path / "objs.json", json.dumps([{"prompt": "a", "rank": [1, 0]}, {"prompt": "b"}]))
    ps = load_prompts(str(objects), FIELD)
    assert ps.prompts == ["a", "b"] and ps.metadata == [{"rank": [1, 0]}, {}]


def test_geneval_metadata_kept_and_looked_up(tmp_path):
    p = write(tmp_path / "evaluation_metadata.jsonl", "".join(json.dumps(r) + "\n" for r in GENEVAL_ROWS))
    ps = load_prompts(str(p), FIELD)
    assert ps.prompts == [r["prompt"] for r in GENEVAL_ROWS]
    assert ps.metadata[0] == {"tag": "counting", "include": [{"class": "wine glass", "count": 2}],
                              "exclude": [{"class": "wine glass", "count": 3}]}
    batch = ["a photo of a bench", "a photo of two wine glasses", "a photo of a bench"]
    meta = ps.metadata_for(batch)
    assert [m["tag"] for m in meta] == ["single_object", "counting", "single_object"]
    assert meta[0]["include"] == [{"class": "bench", "count": 1}] and "exclude" not in meta[0]
    with pytest.raises(KeyError, match="a photo of a cat"):
        ps.metadata_for(["a photo of a cat"])


def test_csv_and_tsv_columns(tmp_path):
    csv_path = write(tmp_path / "bench.csv", 'Prompts,Category\n"A cat, sitting on a chair",Counting\nA red car,Colors\n')
    ps = load_prompts(f"{csv_path}#Prompts", FIELD)
    assert ps.prompts == ["A cat, sitting on a chair", "A red car"]
    assert ps.metadata == [{"Category": "Counting"}, {"Category": "Colors"}]
    tsv = write(tmp_path / "parti.tsv", "Prompt\tCategory\tChallenge\tNote\n"
                                        "bond\tAbstract\tBasic\t\n"
                                        "a cat on a mat\tAnimals\tSimple Detail\tnote\n")
    ps = load_prompts(str(tsv), FIELD)  # the default column `prompt` finds `Prompt` (case-insensitive)
    assert ps.prompts == ["bond", "a cat on a mat"]
    assert ps.metadata[1] == {"Category": "Animals", "Challenge": "Simple Detail", "Note": "note"}
    assert ps.source.endswith("parti.tsv#Prompt")


def test_mapping_limit_and_format(tmp_path):
    p = write(tmp_path / "prompts.list", "one\ntwo\nthree\n")
    assert load_prompts({"path": str(p), "limit": 2}, FIELD).prompts == ["one", "two"]
    j = write(tmp_path / "rows.data", '{"prompt": "a"}\n{"prompt": "b", "k": 1}\n')
    ps = load_prompts({"path": str(j), "format": "jsonl", "limit": 1}, FIELD)
    assert ps.prompts == ["a"] and ps.metadata == [{}]
    assert load_prompts({"path": "ddpo:simple_animals", "limit": 3}, FIELD).prompts == ["cat", "dog", "horse"]


# ----------------------------------------------------------------------------- Hugging Face datasets


def test_hf_dataset_saved_to_disk_and_loaded_back(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    ds = datasets.Dataset.from_dict({"prompt": ["a cat", "a dog", "a fox"], "tag": ["x", "y", "z"],
                                     "blob": [b"\x00", b"\x01", b"\x02"]})
    ds.save_to_disk(str(tmp_path / "one"))
    ps = load_prompts(str(tmp_path / "one"), FIELD)  # a save_to_disk directory needs no hf: prefix
    assert ps.prompts == ["a cat", "a dog", "a fox"]
    assert ps.metadata == [{"tag": "x"}, {"tag": "y"}, {"tag": "z"}]  # binary column dropped
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([2])})
    dd.save_to_disk(str(tmp_path / "two"))
    assert load_prompts(f"hf:{tmp_path / 'two'}#prompt@test", FIELD).prompts == ["a fox"]
    assert load_prompts(f"hf:{tmp_path / 'two'}@test#prompt", FIELD).prompts == ["a fox"]
    assert load_prompts({"path": f"hf:{tmp_path / 'two'}", "split": "train"}, FIELD).prompts == ds["prompt"]
    ds.rename_column("prompt", "caption").to_parquet(str(tmp_path / "d.parquet"))
    ps = load_prompts(f"hf:{tmp_path / 'd.parquet'}#caption", FIELD)
    assert ps.prompts == ["a cat", "a dog", "a fox"] and ps.metadata_for(["a dog"]) == [{"tag": "y"}]
    msg = error(f"hf:{tmp_path / 'two'}")
    assert "two" in msg and "splits train, test" in msg
    msg = error(f"hf:{tmp_path / 'two'}@val")
    assert "no split 'val'" in msg
    msg = error(f"hf:{tmp_path / 'one'}#caption")
    assert "one" in msg and "no column 'caption'" in msg and "available: prompt, tag, blob" in msg
    datasets.Dataset.from_dict({"prompt": ["ok", None]}).save_to_disk(str(tmp_path / "bad"))
    msg = error(str(tmp_path / "bad"))
    assert "bad" in msg and "row 1" in msg and "NoneType" in msg


def test_hf_name_is_read_offline_from_the_cache_only(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    before = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    msg = error("hf:someone/not-cached-prompts#Prompt@train", "data.eval_prompts")
    assert "'someone/not-cached-prompts'" in msg and "local datasets cache" in msg and "does not download" in msg
    assert (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE) == before


def test_missing_datasets_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    (tmp_path / "saved").mkdir()
    msg = error(f"hf:{tmp_path / 'saved'}")
    assert msg == f"{FIELD}: Hugging Face datasets are read with the optional package datasets: pip install datasets"


# ----------------------------------------------------------------------------- DDPO prompt functions


def test_ddpo_simple_animals():
    ps = load_prompts("ddpo:simple_animals", FIELD)
    assert len(ps) == 45 and len(set(ps)) == 45 and ps.source == "ddpo:simple_animals"
    assert ps[:4] == ["cat", "dog", "horse", "monkey"] and ps[31] == "frog" and ps[-1] == "kangaroo"


def test_ddpo_nouns_activities_is_every_combination():
    ps = load_prompts("ddpo:nouns_activities", FIELD)
    assert len(ps) == 135 and len(set(ps)) == 135
    assert ps[:3] == ["a cat washing the dishes", "a cat riding a bike", "a cat playing chess"]
    assert ps[60] == "an ant washing the dishes"  # ant is animal 20: inflect's "an"
    assert ps[-1] == "a kangaroo playing chess"
    assert sum(p.startswith("an ") for p in ps) == 3
    assert load_prompts("ddpo:nouns_activities", FIELD).prompts == ps.prompts  # no randomness


def test_ddpo_imagenet_ranges():
    animals = load_prompts("ddpo:imagenet_animals", FIELD)
    assert len(animals) == 398 and animals[0] == "tench, Tinca tinca"
    assert animals[-1] == "puffer, pufferfish, blowfish, globefish"
    dogs = load_prompts("ddpo:imagenet_dogs", FIELD)
    assert len(dogs) == 118 and dogs[0] == "Chihuahua" and dogs[-1] == "Mexican hairless"
    every = load_prompts("ddpo:imagenet_all", FIELD)
    assert len(every) == 1000 and every[-1] == "toilet tissue, toilet paper, bathroom tissue"


# ----------------------------------------------------------------------------- errors


def test_missing_file_names_field_and_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = error("prompts/mine.txt", "data.eval_prompts")
    assert msg.startswith("data.eval_prompts: prompt file prompts/mine.txt not found")
    assert str(tmp_path) in msg  # where a relative path was looked for


@pytest.mark.parametrize("name, text", [
    ("e.txt", "\n  \n"), ("e.jsonl", "\n"), ("e.json", "[]"), ("e.csv", "prompt,tag\n"), ("z.txt", ""),
])
def test_empty_file(tmp_path, name, text):
    p = write(tmp_path / name, text)
    msg = error(str(p))
    assert str(p) in msg and ("empty" in msg or "no rows" in msg)


def test_missing_field_or_column_lists_the_available_ones(tmp_path):
    p = write(tmp_path / "evaluation_metadata.jsonl", "".join(json.dumps(r) + "\n" for r in GENEVAL_ROWS))
    msg = error(f"{p}#caption", "data.eval_prompts")
    assert msg.startswith("data.eval_prompts: ") and str(p) in msg
    assert "no field 'caption'; available: tag, include, exclude, prompt" in msg
    c = write(tmp_path / "t.csv", "text,category\nhello,x\n")
    msg = error(str(c))
    assert str(c) in msg and "no column 'prompt'; available: text, category" in msg


@pytest.mark.parametrize("name, text, where, kind", [
    ("a.jsonl", '{"prompt": "fine"}\n{"prompt": 42}\n', "line 2", "int"),
    ("a.json", '[{"prompt": "fine"}, {"prompt": null}]', "item 1", "NoneType"),
    ("b.json", '["fine", ["a", "list"]]', "item 1", "list"),
    ("a.csv", "prompt,tag\nfine,x\n,y\n", "line 3", "empty prompt"),
])
def test_non_text_value_names_the_row(tmp_path, name, text, where, kind):
    p = write(tmp_path / name, text)
    msg = error(str(p))
    assert str(p) in msg and where in msg and kind in msg


# Every file source x every failure: one line that starts with the config field and names the file.
SOURCE_FAILURES = [
    # (case, file name, contents or None for a missing file, spec suffix, what the message says)
    ("missing", "p.txt", None, "", "not found"),
    ("missing", "p.jsonl", None, "", "not found"),
    ("missing", "p.json", None, "", "not found"),
    ("missing", "p.csv", None, "#Prompts", "not found"),
    ("missing", "p.tsv", None, "#Prompt", "not found"),
    ("empty", "p.txt", "", "", "is empty"),
    ("empty", "p.jsonl", "\n\n", "", "is empty"),
    ("empty", "p.json", "[]", "", "is an empty list"),
    ("empty", "p.csv", "", "", "is empty"),
    ("empty", "p.tsv", "Prompt\tCategory\n", "", "has a header but no rows"),
    ("no field", "p.txt", "a cat\n", "#caption", "has no field 'caption'"),
    ("no field", "p.jsonl", '{"text": "a cat"}\n', "", "has no field 'prompt'; available: text"),
    ("no field", "p.json", '[{"text": "a cat"}]', "#caption", "has no field 'caption'; available: text"),
    ("no field", "p.csv", "text,tag\na cat,x\n", "", "has no column 'prompt'; available: text, tag"),
    ("no field", "p.tsv", "Prompt\tCategory\na cat\tx\n", "#Note", "has no column 'Note'; available: Prompt, Category"),
    ("non-text", "p.jsonl", '{"prompt": "ok"}\n{"prompt": ["a", "b"]}\n', "", "line 2: 'prompt' is list"),
    ("non-text", "p.json", '[{"prompt": "ok"}, {"prompt": 3.5}]', "", "item 1: 'prompt' is float"),
    ("non-text", "p.json", '["ok", {"x": 1}, 7]', "#x", "item 0 is a string, not an object with field 'x'"),
    ("non-text", "p.csv", "prompt,tag\nok,x\n   ,y\n", "", "line 3: 'prompt' is an empty prompt"),
    ("non-text", "p.tsv", "Prompt\tCategory\nok\tx\n\tAnimals\n", "", "line 3: 'Prompt' is an empty prompt"),
]


@pytest.mark.parametrize("case, name, text, suffix, says", SOURCE_FAILURES,
                         ids=[f"{c[1].split('.')[1]}-{c[0]}-{i}" for i, c in enumerate(SOURCE_FAILURES)])
def test_every_file_source_fails_in_one_line_naming_field_and_file(tmp_path, case, name, text, suffix, says):
    p = tmp_path / name if text is None else write(tmp_path / name, text)
    msg = error(f"{p}{suffix}", "data.eval_prompts")
    assert msg.startswith(f"data.eval_prompts: {'prompt file ' if case == 'missing' else ''}{p}"), msg
    assert says in msg, msg


def test_every_hf_failure_is_one_line_naming_field_and_dataset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    for missing in (tmp_path / "no-such-dir", tmp_path / "no.parquet"):
        msg = error(f"hf:{missing}#prompt", "data.eval_prompts")
        assert msg.startswith(f"data.eval_prompts: dataset path {missing} not found"), msg
    empty = datasets.Dataset.from_dict({"prompt": []}, features=datasets.Features({"prompt": datasets.Value("string")}))
    empty.to_parquet(str(tmp_path / "empty.parquet"))
    # datasets itself refuses zero-row files and saved directories; the error stays one line naming the path
    msg = error(f"hf:{tmp_path / 'empty.parquet'}", "data.eval_prompts")
    assert msg.startswith(f"data.eval_prompts: {tmp_path / 'empty.parquet'}: datasets could not read it"), msg
    assert msg.endswith("holds at least one row")
    empty.save_to_disk(str(tmp_path / "empty"))
    msg = error(f"hf:{tmp_path / 'empty'}", "data.eval_prompts")
    assert msg.startswith(f"data.eval_prompts: hf:{tmp_path / 'empty'}: datasets could not load"), msg
    assert msg.endswith("holds at least one row")
    datasets.Dataset.from_dict({"caption": ["a cat"], "n": [1]}).to_parquet(str(tmp_path / "d.parquet"))
    msg = error(f"hf:{tmp_path / 'd.parquet'}", "data.eval_prompts")
    assert msg.startswith(f"data.eval_prompts: hf:{tmp_path / 'd.parquet'} has no column 'prompt'; "
                          f"available: caption, n"), msg
    datasets.Dataset.from_dict({"prompt": ["ok", "fine"], "n": [1, 2]}).to_parquet(str(tmp_path / "n.parquet"))
    msg = error(f"hf:{tmp_path / 'n.parquet'}#n", "data.eval_prompts")
    assert msg.startswith(f"data.eval_prompts: hf:{tmp_path / 'n.parquet'} row 0: 'n' is int (1), not text"), msg


def test_non_text_in_a_list():
    assert "item 1" in error(["ok", 3]) and "int" in error(["ok", 3])


@pytest.mark.parametrize("path, origin, source", [
    ("dataset/pickscore/train.txt", "Flow-GRPO's PickScore training prompts", "yifan123/flow_grpo"),
    ("dataset/pickscore/test.txt", "Flow-GRPO's PickScore evaluation prompts", "yifan123/flow_grpo"),
    ("dataset/geneval/train_metadata.jsonl", "GenEval training prompts", "yifan123/flow_grpo"),
    ("dataset/geneval/test_metadata.jsonl", "GenEval evaluation prompts", "yifan123/flow_grpo"),
    ("dataset/ocr/train.txt", "text-rendering (OCR) training prompts", "yifan123/flow_grpo"),
    ("dataset/ocr/test.txt", "text-rendering (OCR) evaluation prompts", "yifan123/flow_grpo"),
    ("geneval/prompts/evaluation_metadata.jsonl", "GenEval benchmark", "djghosh13/geneval"),
    ("dataset/hpdv2/prompts.txt", "DanceGRPO's training prompts", "assets/prompts.txt of the DanceGRPO repository"),
    ("dataset/hpdv2/benchmark/anime.json", "HPDv2 benchmark", "benchmark/anime.json of the HPDv2 dataset"),
    ("bench/DrawBench.csv#Prompts", "DrawBench", "Imagen"),
    ("PartiPrompts.tsv#Prompt", "PartiPrompts", "google-research/parti"),
])
def test_known_reference_file_says_where_it_comes_from(tmp_path, monkeypatch, path, origin, source):
    monkeypatch.chdir(tmp_path)
    msg = error(path)
    file = path.split("#")[0]
    assert msg.startswith(f"{FIELD}: prompt file {file} not found")
    assert origin in msg and source in msg and msg.endswith(f"put it at {file}")
    assert "://" not in msg


def test_spec_errors():
    assert "unknown world split 'test'" in error("world:test")
    msg = error("ddpo:imagenet_cats")
    assert "unknown DDPO prompt function 'imagenet_cats'" in msg and "ddpo:nouns_activities" in msg
    for bad in (None, 3, {"file": "x.txt"}, "", [], {"path": "x.txt", "limit": 0}, {"path": "x", "format": "xml"}):
        error(bad)
    assert error(None).endswith("got None (NoneType)")
    assert error({"path": "world:all", "colum": "x"}).startswith(f"{FIELD}.colum: unknown key")
    assert error({"path": "ddpo:simple_animals", "split": "train"}).startswith(f"{FIELD}.split: does not apply")


def test_prompt_set_is_a_sequence_and_checks_metadata_length():
    ps = PromptSet(["a", "b", "a"], [{"i": 0}, {"i": 1}, {"i": 2}], "x")
    assert len(ps) == 3 and ps[1] == "b" and list(ps) == ["a", "b", "a"] and "b" in ps
    assert ps.metadata_for(["a", "b"]) == [{"i": 0}, {"i": 1}]  # first occurrence of a duplicate
    with pytest.raises(ValueError):
        PromptSet(["a"], [], "x")
    assert load_prompts(ps, FIELD) is ps


# ----------------------------------------------------------------------------- shipped real configs


REAL_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "real").glob("*.yaml"))


def _config_chain(path: Path) -> list[Path]:
    """The config file and the files it inherits from (``base: other.yaml``, relative to the file)."""
    chain = [path]
    while True:
        base = re.search(r"^base:\s*(\S+)", chain[-1].read_text(), re.M)
        if base is None:
            return chain
        chain.append(chain[-1].parent / base.group(1))


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_real_configs_prompts_load_or_point_to_their_source(tmp_path, monkeypatch, name):
    """Every prompt spec of a real config loads from the package or fails with the pointer its comment gives."""
    monkeypatch.chdir(tmp_path)  # no prompt files here
    cfg = load_config(f"real/{name}")
    comments = "\n".join(ln.split("#", 1)[1] for p in _config_chain(CONFIG_DIR / "real" / f"{name}.yaml")
                          for ln in p.read_text().splitlines() if "#" in ln)
    for key in ("prompts", "eval_prompts"):
        spec = getattr(cfg.data, key)
        try:
            ps = load_prompts(spec, f"data.{key}")
        except ConfigError as e:
            msg = str(e)
            path = spec["path"] if isinstance(spec, dict) else spec
            assert known_file_origin(path) is not None, msg
            assert msg.endswith(f"put it at {path}") and path in comments
            repo = re.search(r"\(([\w-]+/[\w.-]+)[;)]", msg).group(1)
            assert repo in comments, (repo, name)
        else:
            assert len(ps) > 0 and isinstance(spec, (list, str)) and (isinstance(spec, list) or spec.startswith("ddpo:"))

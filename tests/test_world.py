"""The synthetic world: determinism, valid COCO exports, a sound MCQ, and a base model that fails on negation."""

import hashlib
import json
import re
from pathlib import Path

import open_clip
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import negation_plugins as npl
from negation_plugins.benchmarks.mcq import read_mcq_csv, run_mcq
from negation_plugins.benchmarks.retention import CocoRetrieval
from negation_plugins.cli import cli
from negation_plugins.lexicon import NEGATION_WORDS
from negation_plugins.phrasings import BY_FAMILY, families
from negation_plugins.world import (
    CATEGORIES,
    WorldConfig,
    WorldFiles,
    generate_scenes,
    make_world,
)

# The phrasing families of the world the shipped base model was pretrained on, in table order.
WORLD_FAMILIES = [
    *(
        "no without but-not not-a-single does-not absent nothing-like free-of not-present never no-sign-of zero none-of"
    ).split(),
    *(
        "x-free lacking contraction without-a-single nothing-resembling empty-of there-are-no nowhere devoid-of "
        "implicit-verb neither-nor"
    ).split(),
]

# Generic English negation cues (wider than the lexicon: held-out phrasings use words it does not count) and the
# clause boundaries of a caption: a clause with a cue negates the objects it names, the others affirm theirs.
NEGATION_CUE = re.compile(
    r"\b(no|not|without|nothing|none|zero|never|cannot|absent|free|lacking|lacks|empty|devoid|nowhere|missing|fails|"
    r"omitting|neither)\b|n't\b",
    re.IGNORECASE,
)
CLAUSE = re.compile(r"[,;]| but | with | only | just ", re.IGNORECASE)


def digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_world_is_deterministic_in_its_seed(tmp_path):
    config = WorldConfig(n_images=24, seed=3, image_size=32, val_fraction=0.25)
    first = digest(make_world(tmp_path / "a", config, progress=False).root)
    assert first == digest(make_world(tmp_path / "b", config, progress=False).root)
    other = digest(make_world(tmp_path / "c", WorldConfig(n_images=24, seed=4, val_fraction=0.25), progress=False).root)
    assert first["captions_train.json"] != other["captions_train.json"]
    assert len([k for k in first if k.startswith("images/")]) == 24


def test_bad_world_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at most"):
        generate_scenes(10**6, seed=0)
    with pytest.raises(ValueError, match="n_images"):
        make_world(tmp_path / "w", WorldConfig(n_images=1))
    with pytest.raises(FileNotFoundError, match="not a world folder"):
        WorldFiles.at(tmp_path)


def test_coco_exports_are_consistent(world_coco):
    seen_ids = set()
    for captions_path, instances_path in (
        (world_coco.captions, world_coco.instances),
        (world_coco.val_captions, world_coco.val_instances),
    ):
        captions, instances = json.loads(captions_path.read_text()), json.loads(instances_path.read_text())
        image_ids = [img["id"] for img in captions["images"]]
        assert image_ids == [img["id"] for img in instances["images"]] and len(set(image_ids)) == len(image_ids)
        assert not seen_ids & set(image_ids), "train and val share images"
        seen_ids |= set(image_ids)
        assert len({a["id"] for a in captions["annotations"]}) == len(captions["annotations"])
        per_image = {i: [] for i in image_ids}
        for ann in captions["annotations"]:
            per_image[ann["image_id"]].append(ann["caption"])
            words = set(re.findall(r"[a-z']+", ann["caption"].lower()))
            assert not words & set(NEGATION_WORDS), ann["caption"]
        assert all(len(c) == 5 and len(set(c)) == 5 for c in per_image.values())
        categories = {c["id"]: c["name"] for c in instances["categories"]}
        assert sorted(categories.values()) == sorted(CATEGORIES)
        assert {a["category_id"] for a in instances["annotations"]} == set(categories), "a category is unused"
        sizes = {img["id"]: (img["width"], img["height"]) for img in instances["images"]}
        for ann in instances["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
            # every object is named in the image's canonical caption
            assert categories[ann["category_id"]] in per_image[ann["image_id"]][0]
        for img in captions["images"]:
            with Image.open(world_coco.images / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) and im.mode == "RGB"


def objects_in(text):
    return [c for c in CATEGORIES if re.search(rf"\b{c}(e?s)?\b", text.lower())]  # singular or plural


def affirmed_and_negated(caption):
    affirmed, negated = [], []
    for clause in CLAUSE.split(caption):
        (negated if NEGATION_CUE.search(clause) else affirmed).extend(objects_in(clause))
    return affirmed, negated


def truth(caption, present):
    affirmed, negated = affirmed_and_negated(caption)
    return all(o in present for o in affirmed) and not any(o in present for o in negated)


def bag_of_words_score(caption, present):
    """What a model blind to negation does: reward mentioned present objects, penalise mentioned absent ones."""
    return sum(1 if o in present else -1 for o in objects_in(caption))


def present_objects(instances_json):
    """{image file name: set of the object names in it}"""
    instances = json.loads(instances_json.read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    files = {img["id"]: img["file_name"] for img in instances["images"]}
    present = {files[i]: set() for i in files}
    for ann in instances["annotations"]:
        present[files[ann["image_id"]]].add(names[ann["category_id"]])
    return present


@pytest.mark.parametrize("split", ["mcq_csv", "mcq_train_csv"])
def test_mcq_has_exactly_one_true_option_and_defeats_bag_of_words(world_coco, split):
    present = present_objects(world_coco.val_instances if split == "mcq_csv" else world_coco.instances)
    rows = read_mcq_csv(getattr(world_coco, split))
    assert {r.type for r in rows} == {"affirmation", "negation", "hybrid"}
    bow_hits = {"affirmation": [], "negation": [], "hybrid": []}
    for row in rows:
        truths = [truth(c, present[row.image_path]) for c in row.captions]
        assert truths.count(True) == 1 and truths[row.correct_answer], (row, present[row.image_path])
        scores = [bag_of_words_score(c, present[row.image_path]) for c in row.captions]
        bow_hits[row.type].append(scores.index(max(scores)) == row.correct_answer and scores.count(max(scores)) == 1)
    assert all(bow_hits["affirmation"])
    assert not any(bow_hits["negation"]) and not any(bow_hits["hybrid"])
    # presence-based false captions: "... but no X" / "no X" with X in the image
    assert any(
        not truth(c, present[r.image_path]) and set(affirmed_and_negated(c)[1]) & present[r.image_path]
        for r in rows
        for c in r.captions
    )
    # negation and hybrid items in train and held-out phrasing families, about half each, every family used
    phrased = [r for r in rows if r.type != "affirmation"]
    assert all(r.phrasing in BY_FAMILY and r.phrasing_split == BY_FAMILY[r.phrasing].split for r in phrased)
    assert all(r.phrasing == "" and r.phrasing_split == "" for r in rows if r.type == "affirmation")
    held_out = sum(r.phrasing_split == "held-out" for r in phrased)
    assert 0.35 < held_out / len(phrased) < 0.65
    if split == "mcq_train_csv":
        assert {r.phrasing for r in phrased} == {p.family for p in families(in_world=True)}


def test_pretraining_web_negations_are_true_and_use_held_out_cues_too(world_coco):
    """The base model's rare web negations: one true caption per training image (what it shows, then an absent
    object negated), phrased in every family, so held-out cue words are known to the base model as to a real CLIP."""
    from negation_plugins.benchmarks.common import read_coco_pairs
    from trainers.pretrain_world import web_negations

    present = present_objects(world_coco.instances)
    pairs, _ = read_coco_pairs(world_coco.captions, world_coco.images)
    captions = web_negations(world_coco, seed=0)
    assert len(captions) == len(pairs) and captions == web_negations(world_coco, seed=0)
    for (path, _), caption in zip(pairs, captions):
        affirmed, negated = affirmed_and_negated(caption)
        assert affirmed and negated and truth(caption, present[path.name]), (path.name, caption)
    words = set(re.findall(r"[a-z']+", " ".join(captions).lower()))
    assert {"without", "lacking", "devoid", "nowhere", "neither", "missing"} <= words


def test_the_world_keeps_the_phrasing_families_its_shipped_model_was_pretrained_with():
    """Train families added later (``in_world = false``) reach the negator, not the world: its MCQ, its web
    negations and so the shipped base model and every figure measured on them stay as they were."""
    assert [p.family for p in families(in_world=True)] == WORLD_FAMILIES
    assert all(p.split == "train" for p in families() if not p.in_world)


def test_world_cli_make(tmp_path):
    result = CliRunner().invoke(cli, ["world", "make", "--out", str(tmp_path / "w"), "--n-images", "20"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["n_train"] + summary["n_val"] == 20
    assert read_mcq_csv(summary["mcq_csv"])
    bad = CliRunner().invoke(cli, ["world", "make", "--out", str(tmp_path / "x"), "--n-images", "1"])
    assert bad.exit_code != 0 and "n_images" in bad.output


@pytest.mark.e2e
def test_world_model_loads_everywhere_and_fails_on_negation(world_model, world_coco):
    folder = world_model[len("local-dir:") :]
    model, _, preprocess = open_clip.create_model_and_transforms(world_model)
    tokenizer = open_clip.get_tokenizer(world_model)
    clip = npl.load_clip(world_model)
    image = preprocess(Image.open(next(world_coco.images.iterdir())).convert("RGB"))[None]
    with torch.no_grad():
        assert torch.allclose(model.encode_image(image), clip.model.encode_image(image), atol=1e-6)
    assert tokenizer(["a red circle"]).shape[1] == clip.context_length
    assert json.loads(Path(folder, "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]["vocab_size"] == 49408

    mcq = run_mcq(clip, world_coco.mcq_csv, world_coco.images, progress=False)
    # Measured (fixture budget): affirmation ~0.4-0.5, negation ~0.15 - below the 0.25 of guessing, because the
    # model prefers "no X" with X in the image: the bag-of-words failure downstream fine-tuning has to fix.
    assert mcq["negation"] < 0.25, mcq
    assert mcq["affirmation"] >= mcq["negation"] + 0.15, mcq
    retrieval = CocoRetrieval().run(
        clip, captions=world_coco.val_captions, images=world_coco.images, captions_per_image=1, progress=False
    )
    assert retrieval["i2t_R@1"] >= 0.3, retrieval  # 80 held-out scenes: chance is 0.0125


def test_shipped_model_is_used_when_its_settings_match_and_checked_by_hash(tmp_path, monkeypatch):
    from negation_plugins.world import shipped
    from trainers import pretrain_world as pretrain_module

    model = tmp_path / "model"
    model.mkdir()
    files = {"open_clip_config.json": "{}", "open_clip_model.safetensors": "weights", "pretrain_result.json": "{}"}
    for name, text in files.items():
        (model / name).write_text(text)
    (model / "result.json").write_text("not shipped")
    folder = tmp_path / "package" / "base_model"
    manifest = shipped.ship(model, tuple(files), "world-abc", folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*files, "shipped.json"])
    assert manifest["sha256"]["open_clip_model.safetensors"] == shipped.sha256(model / "open_clip_model.safetensors")
    assert shipped.shipped_model("world-abc", folder) == {name: folder / name for name in files}
    assert shipped.shipped_model("world-xyz", folder) is None
    assert shipped.shipped_model("world-abc", tmp_path / "nothing") is None

    # pretrain() copies the shipped model instead of training when the cache key matches
    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"config": {"n_images": 3}}))
    config = pretrain_module.PretrainConfig(steps=1)
    shipped.ship(model, tuple(files), pretrain_module.cache_key(WorldFiles.at(world), config), folder)
    monkeypatch.setattr(shipped, "FOLDER", folder)
    result = pretrain_module.pretrain(world, tmp_path / "out", config, cache_dir=tmp_path / "cache", progress=False)
    assert result["shipped"] and (tmp_path / "out" / "open_clip_model.safetensors").read_text() == "weights"
    # a folder that already holds the copy is left in place (not swapped under a job reading it)
    inode = (tmp_path / "out").stat().st_ino
    pretrain_module.pretrain(world, tmp_path / "out", config, cache_dir=tmp_path / "cache", progress=False)
    assert (tmp_path / "out").stat().st_ino == inode

    (folder / "open_clip_model.safetensors").write_text("damaged")
    with pytest.raises(shipped.ShippedModelError, match=r"open_clip_model.safetensors: sha256 .* does not match"):
        pretrain_module.pretrain(world, tmp_path / "out2", config, cache_dir=tmp_path / "cache", progress=False)


def test_a_folder_written_over_a_symlink_replaces_the_link_and_keeps_its_target(tmp_path):
    from negation_plugins.atomic import atomic_folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.bin").write_text("theirs")
    (tmp_path / "base_model").symlink_to(elsewhere)
    atomic_folder(tmp_path / "base_model", lambda tmp: (tmp / "model.bin").write_text("ours"))
    assert not (tmp_path / "base_model").is_symlink() and (tmp_path / "base_model" / "model.bin").read_text() == "ours"
    assert (elsewhere / "model.bin").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base_model", "elsewhere"]


def test_a_shipped_base_model_matches_the_default_settings(tmp_path):
    """A model in the package must be the one `negclip demo` (default world, seed 0) would pretrain: same cache key
    (a change to the world or pretraining settings must re-ship it: `negclip world pretrain --no-cache --ship`),
    files intact (sha256), small, loadable. Until one is shipped (see README) the demo pretrains and caches."""
    from dataclasses import asdict

    from negation_plugins.world import shipped
    from trainers.pretrain_world import PretrainConfig, cache_key

    manifest = shipped.FOLDER / shipped.MANIFEST
    if not manifest.is_file():
        assert not shipped.FOLDER.exists() or not any(shipped.FOLDER.iterdir()), "model files without shipped.json"
        return
    (tmp_path / "world.json").write_text(json.dumps({"config": asdict(WorldConfig())}))
    key = cache_key(WorldFiles.at(tmp_path), PretrainConfig())
    files = shipped.shipped_model(key)
    assert files is not None, f"{manifest} is for other settings than the default ({key}): re-ship the model"
    assert files["open_clip_model.safetensors"].stat().st_size < 20 * 2**20
    clip = npl.load_clip(f"local-dir:{shipped.FOLDER}")
    assert clip.encode_text(["a red circle."]).shape[-1] == 64

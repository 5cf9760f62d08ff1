"""The second world, ``icons`` (reporting only): deterministic, nothing in common with ``shapes`` a recipe could latch
onto (objects, colours, caption frames, negation cues), the same export format, and a shipped base model that reads
its objects but not their negation."""

import json
import re

import pytest
from click.testing import CliRunner

import negation_plugins as npl
from negation_plugins.benchmarks.mcq import read_mcq_csv, run_mcq
from negation_plugins.benchmarks.retention import CocoRetrieval
from negation_plugins.cli import cli
from negation_plugins.data.language import pluralize
from negation_plugins.lexicon import NEGATION_WORDS
from negation_plugins.phrasings import PHRASINGS
from negation_plugins.world import WorldConfig, WorldFiles, captions, icons, make_world, scenes
from negation_plugins.world.kinds import WORLDS, world_kind

from .test_world import CLAUSE, NEGATION_CUE, digest, present_objects

ICONS = WorldConfig(n_images=240, seed=0, val_fraction=0.25, kind="icons")
OWN_CUES = r"\b(left out|not among|out of the picture|removed|turns up|will not find)\b"  # this world's families
CUE = re.compile(NEGATION_CUE.pattern + "|" + OWN_CUES, re.IGNORECASE)


@pytest.fixture(scope="module")
def icons_world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("icons"), ICONS, progress=False)


def words(text):
    return set(re.findall(r"[a-z']+", text.lower()))


def objects_in(text):
    return [c for c in icons.CATEGORIES if re.search(rf"\b({c}|{pluralize(c)})\b", text.lower())]


def truth(caption, present):
    """True when every object of a clause without a cue is there and none of a clause with one."""
    clauses = CLAUSE.split(caption)
    affirmed = [o for clause in clauses if not CUE.search(clause) for o in objects_in(clause)]
    negated = [o for clause in clauses if CUE.search(clause) for o in objects_in(clause)]
    return all(o in present for o in affirmed) and not any(o in present for o in negated)


def test_icons_world_is_deterministic_and_lays_out_files_like_shapes(tmp_path, icons_world):
    config = WorldConfig(n_images=24, seed=3, val_fraction=0.25, kind="icons")
    first = digest(make_world(tmp_path / "a", config, progress=False).root)
    assert first == digest(make_world(tmp_path / "b", config, progress=False).root)
    shapes = digest(
        make_world(tmp_path / "s", WorldConfig(n_images=24, seed=3, val_fraction=0.25), progress=False).root
    )
    assert first.keys() == shapes.keys()
    assert all(first[name] != shapes[name] for name in first)
    assert WorldFiles.at(icons_world.root).kind == "icons" and WorldFiles.at(tmp_path / "s").kind == "shapes"


def test_icons_vocabulary_grammar_and_cues_share_nothing_with_shapes(icons_world):
    shapes_words = set(scenes.CATEGORIES) | set(scenes.COLOURS)
    assert not (set(icons.CATEGORIES) | set(icons.COLOURS)) & shapes_words
    assert not set(icons.AFFIRMATIVE_TEMPLATES) & set(captions.AFFIRMATIVE_TEMPLATES)
    assert not set(icons.MCQ_AFFIRMATION) & set(captions.MCQ_AFFIRMATION)
    known = {p.family for p in PHRASINGS}
    known_templates = {t for p in PHRASINGS for t in (*p.hybrid, *p.only)}
    for phrasing in icons.PHRASINGS:
        assert phrasing.family not in known and phrasing.split == "held-out"
        assert not {*phrasing.hybrid, *phrasing.only} & known_templates
    text = " ".join(
        [a["caption"] for a in json.loads(icons_world.captions.read_text())["annotations"]]
        + [c for row in read_mcq_csv(icons_world.mcq_csv) for c in row.captions]
    )
    assert not words(text) & shapes_words
    assert set(icons.CATEGORIES) <= words(text) and set(icons.COLOURS) <= words(text)


def test_icons_exports_are_coco_and_negbench_files(icons_world):
    for captions_json, instances_json in (
        (icons_world.captions, icons_world.instances),
        (icons_world.val_captions, icons_world.val_instances),
    ):
        caps, instances = json.loads(captions_json.read_text()), json.loads(instances_json.read_text())
        assert [i["id"] for i in caps["images"]] == [i["id"] for i in instances["images"]]
        assert [c["name"] for c in instances["categories"]] == list(icons.CATEGORIES)
        assert {c["supercategory"] for c in instances["categories"]} == {"icon"}
        present = present_objects(instances_json)
        files = {i["id"]: i["file_name"] for i in caps["images"]}
        per_image = {}
        for ann in caps["annotations"]:
            per_image.setdefault(ann["image_id"], []).append(ann["caption"])
            assert not words(ann["caption"]) & set(NEGATION_WORDS), ann["caption"]
            assert truth(ann["caption"], present[files[ann["image_id"]]]), ann["caption"]
        assert all(len(set(c)) == 5 for c in per_image.values())
    manifest = json.loads((icons_world.root / "world.json").read_text())
    assert manifest["config"]["kind"] == "icons" and manifest["categories"] == list(icons.CATEGORIES)


def test_icons_mcq_has_one_true_option_and_a_false_negation_in_affirmation_items(icons_world):
    present = present_objects(icons_world.val_instances)
    rows = read_mcq_csv(icons_world.mcq_csv)
    assert {r.type for r in rows} == {"affirmation", "negation", "hybrid"}
    for row in rows:
        truths = [truth(c, present[row.image_path]) for c in row.captions]
        assert truths.count(True) == 1 and truths[row.correct_answer], (row, present[row.image_path])
    affirmation = [r for r in rows if r.type == "affirmation"]
    # every affirmation question offers a (false) negation, the option a "a cue marks the answer" shortcut picks
    assert all(any(CUE.search(c) for c in r.captions) for r in affirmation)
    assert not any(CUE.search(r.captions[r.correct_answer]) for r in affirmation)
    phrased = [r for r in rows if r.type != "affirmation"]
    assert {r.phrasing for r in phrased} == {p.family for p in icons.PHRASINGS}
    assert {r.phrasing_split for r in phrased} == {"held-out"}


def test_icons_web_negations_are_true_and_use_its_own_cues(icons_world):
    from negation_plugins.benchmarks.common import read_coco_pairs
    from trainers.pretrain_world import web_negations

    present = present_objects(icons_world.instances)
    pairs, _ = read_coco_pairs(icons_world.captions, icons_world.images)
    negations = web_negations(icons_world, seed=0)
    assert len(negations) == len(pairs)
    assert any(re.search(OWN_CUES, n) for n in negations), "no web negation in the world's own families"
    for (path, _), caption in zip(pairs, negations):
        assert truth(caption, present[path.name]), caption


def test_world_make_kind_flag_and_registry_errors(tmp_path):
    result = CliRunner().invoke(
        cli, ["world", "make", "--kind", "icons", "--out", str(tmp_path / "w"), "--n-images", "12"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["kind"] == "icons"
    bad = CliRunner().invoke(cli, ["world", "make", "--kind", "blobs", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "icons" in bad.output
    with pytest.raises(ValueError, match="unknown world 'blobs'; worlds are shapes, icons"):
        world_kind("blobs")
    assert list(WORLDS) == ["shapes", "icons"]


@pytest.mark.e2e
def test_the_shipped_icons_model_matches_the_default_world_and_fails_on_negation(tmp_path):
    """Like the shapes model: `negclip world pretrain` on the default icons world copies it (same cache key, files
    checked), it names what the images show (R@1) and picks the false option of negation questions."""
    from trainers.pretrain_world import PretrainConfig, pretrain

    world = make_world(tmp_path / "world", WorldConfig(kind="icons"), progress=False)
    result = pretrain(world, tmp_path / "base", PretrainConfig(), cache_dir=tmp_path / "cache", progress=False)
    assert result["shipped"], "the shipped icons model is for other settings: re-ship it"
    clip = npl.load_clip(f"local-dir:{tmp_path / 'base'}")
    mcq = run_mcq(clip, world.mcq_csv, world.images, progress=False)
    assert mcq["affirmation"] >= 0.6 and mcq["negation"] < 0.3 and mcq["hybrid"] < 0.3, mcq
    retrieval = CocoRetrieval().run(clip, captions=world.val_captions, images=world.images, progress=False)
    assert retrieval["i2t_R@1"] >= 0.5, retrieval  # 200 held-out scenes: chance is 0.005

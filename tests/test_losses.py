"""Each objective against a reference written with explicit loops and plain float math."""

import math

import pytest
import torch
import torch.nn.functional as F

from negation_plugins import get
from negation_plugins.hookspecs import hookimpl
from negation_plugins.losses import Objective, build_objective, parse_objectives
from negation_plugins.losses.batch import BUILTIN_ORDER

N, D, K = 4, 6, 3
SCALE = 7.0


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def ce(logits, target):
    """-log softmax(logits)[target] over a plain list of floats."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def rows(t):
    return t.tolist()


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)

    # one (N, D) feature for every built-in key but the MCQ ones, shaped below
    out = {k: unit(N, D) for k in BUILTIN_ORDER if k != "mcq"}
    out["mcq"] = unit(N, K, D)
    out["mcq_answer"] = torch.tensor([0, 2, 1, 2])
    out["logit_scale"] = torch.tensor(SCALE, dtype=torch.float64)
    return out


def ref_clip_sym(images, texts):
    n = len(images)
    i2t = sum(ce([SCALE * dot(images[i], texts[j]) for j in range(n)], i) for i in range(n)) / n
    t2i = sum(ce([SCALE * dot(texts[j], images[i]) for i in range(n)], j) for j in range(n)) / n
    return (i2t + t2i) / 2


def ref_first_block_ce(queries, first, second):
    keys = first + second
    return sum(ce([SCALE * dot(queries[i], k) for k in keys], i) for i in range(N)) / N


def value(name, batch, **options):
    objective, _ = build_objective(name, **options)
    return objective(batch).item()


def test_clip_and_infonce(batch):
    images = rows(batch["image"])
    assert value("clip", batch) == pytest.approx(ref_clip_sym(images, rows(batch["caption"])), rel=1e-9)
    assert value("infonce", batch) == pytest.approx(ref_clip_sym(images, rows(batch["absence"])), rel=1e-9)


def ref_tng(batch):
    images = rows(batch["image"])
    n = len(images)
    triplets = [rows(batch["hybrid"]), rows(batch["full"]), rows(batch["caption"])]
    texts = [(t[i], i) for t in triplets for i in range(n)]  # (embedding, owning image)
    t2i = sum(ce([SCALE * dot(t, images[i]) for i in range(n)], owner) for t, owner in texts) / len(texts)
    i2t = 0.0
    for i in range(n):
        logits = [SCALE * dot(images[i], t) for t, _ in texts]
        denominator = sum(math.exp(v) for v in logits)
        own_mass = sum(math.exp(v) for v, (_, owner) in zip(logits, texts) if owner == i)
        i2t += -math.log(own_mass / denominator)
    return (t2i + i2t / n) / 2


def test_tng(batch):
    assert value("tng", batch) == pytest.approx(ref_tng(batch), rel=1e-9)


def ref_omni(batch, presence_weight=1.0, absence_weight=1.0, lam=1.0, lam_t=1.0, m=0.9):
    images, captions = rows(batch["image"]), rows(batch["caption"])
    presence, absence = rows(batch["presence"]), rows(batch["absence"])
    l1 = ref_first_block_ce(images, captions, presence)
    l2 = sum(ce([SCALE * dot(captions[i], images[j]) for j in range(N)], i) for i in range(N)) / N
    l3 = (
        sum(
            ce(
                [
                    SCALE * dot(images[i], captions[i]),
                    SCALE * dot(images[i], presence[i]),
                ],
                0,
            )
            for i in range(N)
        )
        / N
    )
    margin = (
        sum(
            max(
                0.0,
                dot(captions[i], absence[i]) / math.sqrt(dot(captions[i], captions[i]) * dot(absence[i], absence[i]))
                + m,
            )
            for i in range(N)
        )
        / N
    )
    l_abs = ref_clip_sym(images, absence) + lam * ref_clip_sym(images, captions) + lam_t * margin
    return presence_weight * (l1 + l2 + l3) / 3 + absence_weight * l_abs


def test_omni_default_and_weighted(batch):
    assert value("omni", batch) == pytest.approx(ref_omni(batch), rel=1e-9)
    options = {
        "presence_weight": 0.5,
        "absence_weight": 2.0,
        "caption_weight": 0.3,
        "margin_weight": 4.0,
        "margin": 0.2,
    }
    expected = ref_omni(batch, 0.5, 2.0, 0.3, 4.0, 0.2)
    assert value("omni", batch, **options) == pytest.approx(expected, rel=1e-9)


def test_omni_margin_term_is_active_for_similar_captions(batch):
    """With absence == caption the hinge is cos + m = 1.9 per pair; with m = -2 it is zero everywhere."""
    same = dict(batch, absence=batch["caption"])
    with_margin = value("omni", same, presence_weight=0.0, caption_weight=0.0, margin=0.9)
    without = value("omni", same, presence_weight=0.0, caption_weight=0.0, margin=-2.0)
    assert with_margin - without == pytest.approx(1.9, rel=1e-9)


def test_conclip(batch):
    images, captions = rows(batch["image"]), rows(batch["caption"])
    negated, distractors = rows(batch["presence"]), rows(batch["distractor_image"])
    expected = (
        ref_first_block_ce(images, captions, negated)
        + ref_first_block_ce(captions, images, distractors)
        + ref_first_block_ce(distractors, negated, captions)
    ) / 3
    assert value("conclip", batch) == pytest.approx(expected, rel=1e-9)


def test_negbench_mcq(batch):
    images, options, answers = (
        rows(batch["image"]),
        batch["mcq"].tolist(),
        batch["mcq_answer"].tolist(),
    )
    expected = sum(ce([SCALE * dot(images[i], o) for o in options[i]], answers[i]) for i in range(N)) / N
    assert value("negbench-mcq", batch) == pytest.approx(expected, rel=1e-9)


def test_negbench_mcq_rejects_wrong_shape(batch):
    with pytest.raises(ValueError, match=r"'mcq' must have shape \(N, K, D\)"):
        value("negbench-mcq", dict(batch, mcq=batch["mcq"][:2]))


@pytest.mark.parametrize("name", ["clip", "infonce", "tng", "omni", "conclip", "negbench-mcq"])
def test_gradients_reach_every_required_embedding(batch, name):
    objective, _ = build_objective(name)
    leaves = {}
    for key in objective.requires:
        if batch[key].is_floating_point():
            leaves[key] = batch[key].clone().requires_grad_(True)
    objective(dict(batch, **leaves)).backward()
    for key, leaf in leaves.items():
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0, f"{name}: no gradient for {key!r}"


def test_combination_weights_and_parts(batch):
    combined = parse_objectives(["omni", "clip:0.5", "negbench-mcq:0.01"])
    total, parts = combined(batch)
    assert set(parts) == {"omni", "clip", "negbench-mcq"}
    assert parts["omni"].item() == pytest.approx(ref_omni(batch), rel=1e-9)
    expected = parts["omni"].item() + 0.5 * parts["clip"].item() + 0.01 * parts["negbench-mcq"].item()
    assert total.item() == pytest.approx(expected, rel=1e-12)
    assert combined.requires == (
        "image",
        "caption",
        "presence",
        "absence",
        "logit_scale",
        "mcq",
        "mcq_answer",
    )
    assert total.requires_grad is False  # plain tensors in, nothing to train
    assert not parts["clip"].requires_grad


def test_combination_options_reach_the_objective(batch):
    combined = parse_objectives(["omni:2"], options={"omni": {"margin": 0.2}})
    total, _ = combined(batch)
    assert total.item() == pytest.approx(2 * ref_omni(batch, m=0.2), rel=1e-9)
    with pytest.raises(ValueError, match="not in use"):
        parse_objectives(["clip"], options={"omni": {"margin": 0.2}})


def test_unknown_objective_lists_registered():
    with pytest.raises(
        ValueError,
        match=r"unknown objective 'nope'; registered objectives: .*infonce.*omni",
    ):
        parse_objectives(["nope"])


@pytest.mark.parametrize("spec", ["clip:abc", "clip:-1", "clip:0", "clip:nan", "clip:inf", ":2", ""])
def test_bad_specs_fail_clearly(spec):
    with pytest.raises(ValueError, match="objective spec|no name"):
        parse_objectives([spec])


def test_duplicates_and_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="more than once"):
        parse_objectives(["clip", "clip:0.5"])
    with pytest.raises(ValueError, match="does not take options"):
        parse_objectives(["clip"], options={"clip": {"margin": 1.0}})


def test_missing_batch_key_names_it(batch):
    del batch["presence"]
    with pytest.raises(KeyError, match=r"missing \['presence'\]"):
        parse_objectives(["omni"])(batch)


def test_third_party_objective_is_registered_and_combined(batch, register_plugin):
    class MeanCosine(Objective):
        name = "mean-cosine"
        description = "test objective"
        requires = ("image", "caption")

        def loss(self, b):
            return -(b["image"] * b["caption"]).sum(-1).mean()

    class Plugin:
        @hookimpl
        def register_objectives(self, register):
            register(MeanCosine)

    register_plugin(Plugin(), "test-mean-cosine")
    assert "mean-cosine" in get("objectives")
    total, parts = parse_objectives(["mean-cosine:3", "clip"])(batch)
    cosines = [dot(a, b) for a, b in zip(rows(batch["image"]), rows(batch["caption"]))]
    assert parts["mean-cosine"].item() == pytest.approx(-sum(cosines) / N, rel=1e-9)
    assert total.item() == pytest.approx(3 * parts["mean-cosine"].item() + parts["clip"].item(), rel=1e-12)


@pytest.mark.parametrize("size", [1, 2, 5])
def test_other_batch_sizes_match_reference(size):
    """The vectorized TNG and CLIP code stays equal to the loops for other batch sizes (including 1)."""
    g = torch.Generator().manual_seed(size)
    b = {
        k: F.normalize(torch.randn(size, D, generator=g, dtype=torch.float64), dim=-1)
        for k in ("image", "caption", "hybrid", "full")
    }
    b["logit_scale"] = torch.tensor(SCALE, dtype=torch.float64)
    assert value("clip", b) == pytest.approx(ref_clip_sym(rows(b["image"]), rows(b["caption"])), rel=1e-9)
    assert value("tng", b) == pytest.approx(ref_tng(b), rel=1e-9)

"""The second built-in world's scenes (issue 23, first part): deterministic, far more diverse than a paired pool,
partial captions that parse back to what the image shows (relations checked against the geometry)."""

import collections
import re

import numpy as np
import pytest

from modgap.errors import ModgapError
from modgap.world import relations_scene as rw


@pytest.fixture(scope="module")
def pool():
    scenes = rw.make_scenes(3000, 0, "paired")
    return scenes, [rw.caption(s) for s in scenes]


def test_a_scene_its_caption_and_its_image_are_functions_of_its_seed():
    a, b = rw.make_scene(123), rw.make_scene(123)
    assert a == b and rw.caption(a) == rw.caption(b)
    assert rw.render(a).tobytes() == rw.render(b).tobytes()
    assert rw.RelationScene.from_json(a.to_json()) == a
    assert rw.render(a).size == (rw.SIDE, rw.SIDE)


def test_splits_of_one_seed_share_no_scene():
    seeds = {name: {s.seed for s in rw.make_scenes(500, 3, name)} for name in ("paired", "text-only", "test")}
    assert not (seeds["paired"] & seeds["text-only"]) and not (seeds["paired"] & seeds["test"])


def test_scenes_hold_two_to_four_objects_the_largest_first_and_groups_alike(pool):
    scenes, _ = pool
    for s in scenes:
        assert 2 <= len(s.objects) <= 5  # 2-4 placed, plus at most one inside a ring
        assert s.main.radius == max(o.radius for o in s.objects)
        # clearly the largest: what a caption is about must be visible
        assert all(o.radius <= s.main.radius / rw.SALIENCE + 1e-9 for o in s.objects if o.group != s.main.group)
        for g in {o.group for o in s.objects}:
            members = {(o.shape, o.colour, o.texture, o.size) for o in s.objects if o.group == g}
            assert len(members) == 1


def test_a_counted_main_group_is_a_cluster_placed_by_its_centre(pool):
    scenes, _ = pool
    groups = [s for s in scenes if s.count(s.main) > 1]
    assert len(groups) > 0.2 * len(scenes)
    for s in groups:
        members = [o for o in s.objects if o.group == s.main.group]
        centre = np.mean([o.xy for o in members], axis=0)
        assert max(abs(np.subtract(o.xy, members[0].xy)).max() for o in members) <= rw.CLUSTER + 1e-9
        assert s.attributes()["position"] == rw.region(tuple(centre))


def test_far_more_distinct_scenes_than_a_pool_and_rare_duplicate_captions(pool):
    scenes, captions = pool
    distinct = len({s.description() for s in scenes})
    assert distinct >= 0.99 * len(scenes)  # the first world: 300 main-object descriptions in all
    assert len(set(captions)) >= 0.99 * len(captions)
    assert len({re.sub(r" [,;] .*", "", c) for c in captions}) > 500  # phrasings and synonyms vary too


def test_captions_are_partial_and_parse_back_to_what_the_image_shows(pool):
    scenes, captions = pool
    named = collections.Counter()
    relations = []
    for s, c in zip(scenes, captions, strict=True):
        parsed = rw.parse_caption(c)
        truth = s.attributes()
        for k in rw.ATTRIBUTES:
            if parsed[k] is not None:
                named[k] += 1
                assert parsed[k] == truth[k], (c, k, parsed[k], truth[k])
        if (held := rw.relation_true(s, parsed)) is not None:
            relations.append(held)
    n = len(scenes)
    assert named["shape"] == named["colour"] == named["count"] == n  # always said
    for k in ("size", "texture", "position"):  # said only sometimes: the image holds more than the caption
        assert 0.4 * n < named[k] < 0.9 * n, (k, named[k])
    assert len(relations) > 0.4 * n and all(relations)


def test_a_wrong_relation_is_scored_false():
    s = next(s for s in rw.make_scenes(200, 1, "test") if rw.relations(s) and rw.relations(s)[0][0] is s.main)
    a, rel, b = rw.relations(s)[0]
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}.get(rel, "above")
    text = f"a {a.colour} {a.shape} , {rw.RELATION_WORDS[opposite][0]} a {b.colour} {b.shape} ."
    assert rw.relation_true(s, rw.parse_caption(text)) is False
    text = f"a {a.colour} {a.shape} , {rw.RELATION_WORDS[rel][0]} a {b.colour} {b.shape} ."
    assert rw.relation_true(s, rw.parse_caption(text)) is True


def test_every_caption_word_is_in_the_vocabulary(pool):
    _, captions = pool
    vocabulary = set(rw.vocabulary())
    words = {w for c in captions for w in re.findall(r"[a-z-]+|[,.;]", c)}
    assert words <= vocabulary, words - vocabulary


def test_textures_and_colours_are_drawn():
    s = rw.RelationScene(
        [
            rw.Obj("square", "red", "striped", 9.0, (0.3, 0.5)),
            rw.Obj("circle", "cyan", "plain", 6.0, (0.75, 0.5), 0.0, 1),
        ],
        "dark",
        7,
    )
    pixels = np.asarray(rw.render(s)).reshape(-1, 3)
    red, cyan = np.asarray(rw.COLOURS["red"]), np.asarray(rw.COLOURS["cyan"])
    assert (pixels == red).all(1).sum() > 40 and (pixels == cyan).all(1).sum() > 40
    assert (pixels == red // 3).all(1).sum() > 20  # the stripes
    assert rw.relation_true(s, rw.parse_caption("a red square to the left of a cyan circle .")) is True


def test_describes_marks_the_scenes_a_caption_is_true_of(pool):
    scenes, captions = pool
    mask = rw.describes(captions[:200], scenes[:200])
    assert mask.diagonal().all()  # every caption describes its own scene
    assert mask.mean() < 0.05  # and few others: the world is diverse
    s = scenes[0]
    also = next(o for o in rw.SHAPES if all(x.shape != o for x in s.objects))
    text = f"a {s.main.colour} {s.main.shape} , plus a red {also} ."
    assert rw.parse_caption(text)["also"] == {"colour": "red", "shape": also}
    assert not rw.describes([text], [s])[0, 0]  # it mentions an object the scene does not have
    assert rw.describes([rw.short_caption(s, np.random.default_rng(0))], [s])[0, 0]


def test_an_encoder_trains_on_the_relations_world_and_loads_back(tmp_path):
    import torch
    from transformers import AutoProcessor, CLIPModel, PreTrainedTokenizerFast

    from modgap.world.encoder import train_encoder

    info = train_encoder(tmp_path / "clip", world="relations", pairs=96, steps=2, batch_size=32, width=32,
                         projection_dim=16)  # fmt: skip
    assert info["world"] == "relations" and "--world relations" in info["command"]
    model = CLIPModel.from_pretrained(tmp_path / "clip")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp_path / "clip")
    processor = AutoProcessor.from_pretrained(tmp_path / "clip")
    scenes = rw.make_scenes(4, 0, "test")
    captions = [rw.caption(s) for s in scenes]
    tok = tokenizer(captions, padding=True, return_tensors="pt")
    assert tokenizer.unk_token_id not in tok["input_ids"]  # the vocabulary covers the world's captions
    pixels = processor(images=[rw.render(s) for s in scenes], return_tensors="pt")["pixel_values"]
    assert pixels.shape[-1] == rw.SIDE
    with torch.no_grad():
        out = model(**tok, pixel_values=pixels)
    assert out.logits_per_text.shape == (4, 4) and torch.isfinite(out.logits_per_text).all()


def test_references_parse_back_to_the_truth_and_score_every_attribute(pool):
    from modgap.world.evaluate import score_captions

    scenes, captions = pool
    for s in scenes[:300]:
        for ref in rw.references(s):
            said = rw.parse_caption(ref)
            assert {a: said[a] for a in rw.ATTRIBUTES} == s.attributes(), ref
    assert any("crosses" in r for s in scenes for r in rw.references(s))  # plurals of words ending in s
    perfect = score_captions([rw.references(s)[0] for s in scenes[:300]], scenes[:300], "relations")
    assert perfect["attributes"] == perfect["exact"] == 1.0 and perfect["relation_said"] == 0.0
    # The world's own captions: every attribute they name is right, relations they name hold.
    own = score_captions(captions[:300], scenes[:300], "relations")
    assert own["shape"] == own["colour"] == own["count"] == 1.0 and own["relation"] == own["relation_said"] > 0.3
    assert 0.7 < own["texture"] < 0.95  # said 85 % of the time; unsaid is scored wrong
    shifted = score_captions(captions[1:301], scenes[:300], "relations")  # each caption of another scene
    assert shifted["shape"] < 0.3 and shifted["exact"] < 0.05


def test_the_relations_lm_corpus_is_in_its_tokenizers_vocabulary():
    from modgap.world.lm import RESTATE, lm_texts
    from modgap.world.tiny import build_chat_tokenizer

    tokenizer = build_chat_tokenizer([*rw.vocabulary(), *RESTATE.split(), "<image>"], max_length=256)
    texts = lm_texts(200, 0, tokenizer, "relations")
    assert len(texts) == 400 and rw.PROMPT in texts[0] and RESTATE in texts[1]
    ids = [i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]]
    assert tokenizer.unk_token_id not in ids


def test_grouped_batches_hold_groups_whose_main_objects_differ_only_in_place_and_count(pool):
    from modgap.world.encoder import _grouped_batch, alike_groups

    scenes, _ = pool
    keys, alike = alike_groups(scenes)
    assert keys[0] == (scenes[0].main.colour, scenes[0].main.shape, scenes[0].main.size, scenes[0].main.texture)
    assert sorted(i for members in alike.values() for i in members) == list(range(len(scenes)))
    batch = _grouped_batch(np.random.default_rng(0), keys, alike, groups=32, size=2)
    assert len(batch) == 64 == len(set(batch.tolist()))
    for g in batch.reshape(32, 2):
        assert len({keys[i] for i in g}) == 1
    assert len({keys[g[0]] for g in batch.reshape(32, 2)}) > 16  # many different groups, not one


def test_counterfactual_captions_change_exactly_one_attribute(pool):
    scenes, _ = pool
    for s in scenes[:50]:
        for name in rw.ATTRIBUTES:
            texts = rw.counterfactuals(s, name)
            assert len(texts) == len(rw.VALUES[name])
            said = [rw.parse_caption(t) for t in texts]
            assert {a: said[0][a] for a in rw.ATTRIBUTES} == s.attributes()
            for other in said[1:]:
                changed = [a for a in rw.ATTRIBUTES if other[a] != said[0][a]]
                assert changed == [name], (texts, changed)


def test_scaling_curves_run_on_the_second_world_with_its_own_models(tmp_path):
    """The second world's wiring through the demo's parts: its encoder embeds the stores, its LM is trained,
    captions are scored with its attributes and relations; a rerun reuses every model."""
    import json

    from modgap.store.store import EmbeddingStore
    from modgap.world.scaling import run_scaling_demo
    from modgap.world.steps import DemoSize

    size = DemoSize(image_pool=300, text_pool=400, paired=400, test=60, steps=30, unicorn_seeds=10)
    curves = run_scaling_demo(tmp_path / "w", world="relations", methods=("realign",), scales=(4, 8), size=size,
                              log=lambda _: None)  # fmt: skip
    assert curves["sizes"] == [200, 400] and list(curves["curves"]) == ["text only, realign", "paired images"]
    for rows in curves["curves"].values():
        for row in rows:
            assert set(rw.ATTRIBUTES) | {"relation", "relation_said", "exact", "bleu4"} <= set(row)
            assert "vqa" not in row
    assert EmbeddingStore.open(tmp_path / "w" / "stores" / "paired-image").manifest.encoder["name"] == (
        "builtin:tiny-clip-relations"
    )
    record = json.loads((tmp_path / "w" / "runs" / "scaling" / "paired400" / "model" / "modgap_mllm.json").read_text())
    assert "tiny-lm-relations" in json.dumps(record)
    caption = json.loads((tmp_path / "w" / "runs" / "scaling" / "paired400" / "test_captions.jsonl").read_text()
                         .splitlines()[0])  # fmt: skip
    assert set(caption["truth"]) == set(rw.ATTRIBUTES) and caption["relation"] in (True, False, None)
    # The report's scaling chart: per-image relations (kept beside each caption) give its second panel, whose
    # points are the curves' own relation figures.
    from modgap.world.report import _scaling

    panels = _scaling(tmp_path / "w", curves, "relations").axes
    assert panels[1].get_ylabel() == "relation named and true"
    for name, rows in curves["curves"].items():
        (bars,) = [c for c in panels[1].containers if c.get_label() == name]
        assert list(bars.lines[0].get_ydata()) == pytest.approx([row["relation"] for row in rows])
    again = run_scaling_demo(tmp_path / "w", world="relations", methods=("realign",), scales=(4, 8), size=size,
                             log=lambda _: None)  # fmt: skip
    assert again == curves
    # A small base pool and text pools 1-8x it: sizes base x k; the size both designs use is trained once.
    trained = (tmp_path / "w" / "runs" / "scaling" / "paired400" / "test_scores.json").stat().st_mtime_ns
    based = run_scaling_demo(tmp_path / "w", world="relations", methods=("realign",), scales=(1, 8), size=size,
                             base=50, log=lambda _: None)  # fmt: skip
    assert based["sizes"] == [50, 400] and based["runs"]["paired images"] == ["runs/scaling/paired50",
                                                                             "runs/scaling/paired400"]  # fmt: skip
    assert based["curves"]["paired images"][1] == curves["curves"]["paired images"][1]
    assert (tmp_path / "w" / "runs" / "scaling" / "paired400" / "test_scores.json").stat().st_mtime_ns == trained
    assert json.loads((tmp_path / "w" / "scaling-base50.json").read_text()) == based
    assert json.loads((tmp_path / "w" / "scaling.json").read_text()) == curves  # the other design's file kept
    with pytest.raises(ModgapError, match="scaling base must be 1 to 50"):
        run_scaling_demo(tmp_path / "w", world="relations", scales=(1, 8), size=size, base=51, log=lambda _: None)


def test_sincos_positions_name_each_patch_by_its_column_and_row():
    from modgap.world.encoder import sincos_positions

    grid, width = 3, 8
    table = sincos_positions(grid, width, scale=1.0).numpy()
    omega = 1.0 / 10000 ** (np.arange(2) / 2)
    assert not table[0].any()  # the class token carries no position
    for r in range(grid):
        for c in range(grid):
            expected = np.concatenate([np.sin(c * omega), np.cos(c * omega), np.sin(r * omega), np.cos(r * omega)])
            np.testing.assert_allclose(table[1 + r * grid + c], expected, atol=1e-6)
    assert len({tuple(np.round(row, 5)) for row in table}) == grid * grid + 1  # every patch told apart


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """`modgap demo --world relations` on a small world (shared with the embedder section's test)."""
    from modgap.world.demo import run_demo
    from modgap.world.steps import DemoSize

    workdir = tmp_path_factory.mktemp("relations-demo") / "w"
    size = DemoSize(image_pool=300, text_pool=400, paired=400, test=60, steps=30, unicorn_seeds=40)
    kwargs = {"size": size, "aligners": ("none", "gaussian-ot"), "sft": 40, "world": "relations"}
    return workdir, kwargs, run_demo(workdir, log=lambda _: None, **kwargs)


def test_the_demo_runs_on_the_second_world_and_its_unicorn_row_expands_seeds_with_its_lm(small_demo):
    """`modgap demo --world relations`'s wiring on a small world: every row scored with the second world's
    attributes and relations (no VQA), the Unicorn row pretrained on captions its LM expanded from sparse seeds
    (no conversation stage: that LM writes none), --sft rows from the world's own LM, reports, a rerun reusing
    every model."""
    import json

    from modgap.world.demo import run_demo

    workdir, kwargs, first = small_demo
    assert set(first.rows) == {"none", "gaussian-ot", "gaussian-ot, validated shrinkage", "paired images",
                               "unicorn (synthetic text)", "none + sft 40", "gaussian-ot + sft 40",
                               "gaussian-ot, validated shrinkage + sft 40", "sft 40 only"}  # fmt: skip
    for row in first.rows.values():
        assert set(rw.ATTRIBUTES) | {"attributes", "relation", "exact", "bleu4"} <= set(row) and "vqa" not in row
    # Validated shrinkage equal to gaussian-ot's own (1e-3) reuses its model (and its tuning) instead of a copy.
    chosen = json.loads((workdir / "aligners" / "gaussian-ot-validation.json").read_text())["chosen"]
    for suffix in ("", " + sft 40"):
        same = first.rows["gaussian-ot, validated shrinkage" + suffix] == first.rows["gaussian-ot" + suffix]
        assert same or chosen != 1e-3
    assert (workdir / "runs" / "gaussian-ot-validated").exists() == (chosen != 1e-3)
    seeds = [json.loads(x) for x in (workdir / "world" / "unicorn_seeds.jsonl").read_text().splitlines()]
    captions = [json.loads(x) for x in (workdir / "unicorn" / "captions.jsonl").read_text().splitlines()]
    assert len(seeds) == 40 and len(captions) >= 70 and not (workdir / "unicorn" / "instructions.jsonl").exists()
    # The LM restates each seed (its colour and shape, always said) and fills in the rest from its prior.
    pairs = [(rw.parse_caption(c["caption"]), rw.parse_caption(c["seed"])) for c in captions]
    assert sum(a["colour"] == b["colour"] and a["shape"] == b["shape"] for a, b in pairs) >= 0.8 * len(pairs)
    assert sum(len(c["caption"].split()) > len(c["seed"].split()) + 2 for c in captions) >= 0.5 * len(pairs)
    assert not (workdir / "runs" / "unicorn-sft").exists()
    assert "tiny-lm-relations" in (workdir / "runs" / "sft40-only" / "model" / "modgap_mllm.json").read_text()
    report = (workdir / "report.md").read_text()
    assert "relations world" in report and "tiny-clip-relations" in report and "| relation |" in report
    assert (workdir / "report.html").read_text().count("data:image/png;base64,") == 2
    assert json.loads((workdir / "results.json").read_text())["world"] == "relations"
    again = run_demo(workdir, log=lambda _: None, **kwargs)
    assert again.rows == first.rows


def test_compositional_triples_are_true_and_false_by_each_worlds_own_describes():
    """Every triple's positive caption is true of its image and its negative is not, by the world's own
    ``describes`` (the triples need no labels because the world knows the truth)."""
    from collections import Counter

    from modgap.world.compositional import categories as compositional_categories
    from modgap.world.compositional import compositional_set
    from modgap.world.worlds import get_world

    for world, categories in (("shapes", 5), ("relations", 8)):
        kind = get_world(world)
        scenes = kind.make_scenes(120, 4, "test")
        texts, triples = compositional_set(scenes, 4, world)
        said = {t["id"]: t["text"] for t in texts}
        counts = Counter(t["category"] for t in triples)
        assert len(counts) == categories and min(counts.values()) >= 40, (world, counts)
        assert set(counts) == set(compositional_categories(world))
        for t in triples:
            scene = scenes[int(t["image_id"].removeprefix("test-"))]
            true = kind.describes([said[t["positive_id"]], said[t["negative_id"]]], [scene])[:, 0]
            assert true.tolist() == [True, False], (world, t, said[t["positive_id"]], said[t["negative_id"]])


def test_the_embedder_section_runs_on_the_second_world_with_a_large_gradient_cached_batch(small_demo):
    """`modgap demo --embedder --world relations` in the demo's workdir (world, stores and the paired model
    reused): UniME's variants, the large-batch ablations run with gradient caching, the expected false negatives
    per batch from the world's own ``describes``, the second world's compositional categories; no stock rows."""
    import json

    from modgap.world.embedder_demo import MINED_VARIANT, PATCH_VARIANT, VARIANTS, EmbedderSize, run_embedder_demo

    workdir, kwargs, _ = small_demo
    small = EmbedderSize(steps=3, batch_size=8, patch_base_steps=20, large_batch=16, grad_cache_chunk=4)
    emb = run_embedder_demo(workdir, size=small, world="relations", world_size=kwargs["size"], log=lambda _: None)
    large = {f"{v}, batch 16" for v in ("stage 1 + 2", "1 + 2, no false-negative filter",
                                         "1 + 2, no hard-negative selection")}  # fmt: skip
    assert set(emb["rows"]) == {"tiny-clip-relations", "base VLM (no embedder training)", *VARIANTS, MINED_VARIANT,
                                PATCH_VARIANT, *large}  # fmt: skip
    share = json.loads((workdir / "embedder" / "false_negatives.json").read_text())["share"]
    assert 0 < share < 0.01 and emb["false_negatives_per_batch"] == {8: 56 * share, 16: 240 * share}
    run = workdir / "embedder" / "runs" / "stage-1-2-batch-16"
    settings = json.loads((run / "embedder_train_config.json").read_text())
    assert settings["batch_size"] == 16 and settings["grad_cache_chunk"] == 4
    clip = emb["rows"]["tiny-clip-relations"]
    assert {"comp:replace-texture", "comp:replace-count", "comp:replace-relation", "comp:swap-colour"} <= set(clip)
    assert clip["comp:mean"] > 0.65  # the calibrated encoder itself (chance 0.5)
    assert all(0 <= v <= 1 for row in emb["rows"].values() for v in row.values())
    again = run_embedder_demo(workdir, size=small, world="relations", world_size=kwargs["size"], log=lambda _: None)
    assert again["rows"] == emb["rows"]

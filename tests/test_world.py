"""The built-in world, its shipped tiny models, and `modgap demo --quick`."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from modgap.hub import builtin_path
from modgap.world.evaluate import chance_levels, score_captions
from modgap.world.scene import ATTRIBUTES, caption, make_scenes, parse_caption, references, render


def test_world_is_determined_by_its_seed():
    a, b = make_scenes(20, 3, "test"), make_scenes(20, 3, "test")
    assert [s.to_json() for s in a] == [s.to_json() for s in b]
    assert all(np.array_equal(np.asarray(render(x)), np.asarray(render(y))) for x, y in zip(a, b, strict=True))
    assert [caption(s) for s in a] == [caption(s) for s in b]
    other = make_scenes(20, 3, "paired")
    assert not {s.seed for s in a} & {s.seed for s in other}  # splits never share a scene
    assert [s.to_json() for s in make_scenes(20, 4, "test")] != [s.to_json() for s in a]


def test_captions_parse_back_to_the_main_object():
    rng = np.random.default_rng(0)
    for scene in make_scenes(200, 0, "parse"):
        for text in [caption(scene, rng=rng), *references(scene)]:
            assert parse_caption(text) == scene.attributes(), text


def test_encoder_positives_are_the_images_a_caption_truly_describes():
    from modgap.world.encoder import describes
    from modgap.world.scene import Scene, Thing

    def scene(shape, colour, size, position, distractors=()):
        return Scene(Thing(shape, colour, size, position), [Thing(s, c) for s, c in distractors], (0, 0, 0), 0)

    scenes = [scene("circle", "red", "small", "left", [("star", "blue")]),
              scene("circle", "red", "small", "left"),
              scene("circle", "red", "large", "left", [("star", "blue")]),
              scene("square", "green", "small", "top")]  # fmt: skip
    texts = ["a little red circle on the left .",  # the first two (a synonym of small)
             "a small red circle on the left , next to a small blue star .",  # only the one with the star
             "a red shape",  # a partial caption: every red main object
             "something at the top",
             "a large thing"]  # fmt: skip
    expected = [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1], [0, 0, 1, 0]]
    assert describes(texts, scenes).astype(int).tolist() == expected


def test_multi_positive_loss_against_numpy_and_clips_loss():
    from modgap.world.encoder import multi_positive_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 5)) * 4
    mask = np.eye(5, dtype=bool)
    mask[0, 3] = mask[2, 4] = True

    def one_way(x, m):  # -log of the softmax mass on the positives, per row
        p = np.exp(x - x.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return -np.log((p * m).sum(1)).mean()

    got = multi_positive_loss(torch.tensor(logits), torch.tensor(mask)).item()
    assert got == pytest.approx((one_way(logits, mask) + one_way(logits.T, mask.T)) / 2, rel=1e-12)
    # One positive per row is CLIP's symmetric cross-entropy.
    x, labels = torch.tensor(logits), torch.arange(5)
    clip = (torch.nn.functional.cross_entropy(x, labels) + torch.nn.functional.cross_entropy(x.T, labels)) / 2
    assert multi_positive_loss(x, torch.eye(5, dtype=torch.bool)).item() == pytest.approx(clip.item(), rel=1e-12)


def test_scoring_counts_attributes_independently():
    scenes = make_scenes(2, 0, "score")
    wrong_colour = references(scenes[1])[0]
    for colour in ("red", "green", "blue", "yellow", "purple", "white"):
        if colour != scenes[1].main.colour:
            wrong_colour = wrong_colour.replace(scenes[1].main.colour, colour, 1)
            break
    scores = score_captions([references(scenes[0])[1], wrong_colour], scenes)
    assert scores["shape"] == scores["size"] == scores["position"] == 1.0
    assert scores["colour"] == 0.5 and scores["exact"] == 0.5
    assert 0 < scores["bleu4"] <= 1


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-lm"])
def test_builtin_models_record_where_they_came_from(name):
    info = json.loads((builtin_path(name) / "modgap_world.json").read_text())
    assert info["seed"] == 0 and info["steps"] > 0 and info["command"].startswith("modgap world train-")
    if name == "tiny-lm":  # the shipped record declares what `world train-lm` trains on (and would write)
        from modgap.world.lm import SAMPLING, TRAINED_PROMPTS

        assert info["prompts"] == TRAINED_PROMPTS
        generation = json.loads((builtin_path(name) / "generation_config.json").read_text())
        assert {k: generation[k] for k in SAMPLING} == SAMPLING


def test_builtin_encoder_matches_a_direct_transformers_forward():
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from modgap.encoders import load_encoder

    path = builtin_path("tiny-clip")
    enc = load_encoder("builtin:tiny-clip")
    assert enc.name == "builtin:tiny-clip"
    scenes = make_scenes(4, 0, "check")
    images, texts = [render(s) for s in scenes], [caption(s) for s in scenes]
    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=proc(images=images, return_tensors="pt")["pixel_values"])
        txt = model.get_text_features(**tok(texts, padding=True, return_tensors="pt"))
    img, txt = (torch.nn.functional.normalize(x.pooler_output, dim=-1) for x in (img, txt))
    torch.testing.assert_close(enc.encode_images(images), img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.encode_texts(texts), txt, atol=1e-5, rtol=1e-5)


def test_builtin_lm_loads_through_the_public_loader_and_speaks_the_world():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = builtin_path("tiny-lm")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for scene in make_scenes(20, 0, "lm-check"):
        messages = [{"role": "user", "content": f"{caption(scene, variant=0)} say it another way ."}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
        reply = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        found, truth = parse_caption(reply), scene.attributes()
        for a in ATTRIBUTES:
            hits[a].append(found[a] == truth[a])
    # It restates every attribute it was told (chance 0.2 to 0.5): the in-context use a projector steers.
    assert all(np.mean(h) > 0.9 for h in hits.values()), hits


def test_builtin_lm_expands_seeds_writes_conversations_and_answers_questions_like_an_llm():
    """What a real LLM brings to Unicorn, from the world LM: a sparse seed becomes a full caption that keeps what
    the seed says; a caption becomes question/answer turns as valid JSON with the right answers; a question
    after a caption gets its answer."""
    from modgap.synth.instructions import parse_conversation
    from modgap.synth.llm import Sampling, load_llm_backend
    from modgap.world.scene import EXPAND_PROMPT, QA_PROMPT, question_answers, sparse_seed

    backend = load_llm_backend("builtin:tiny-lm", batch_size=32)
    scenes = make_scenes(30, 0, "lm-check")
    rng = np.random.default_rng(0)
    seeds = [sparse_seed(s, rng) for s in scenes]
    greedy = Sampling(temperature=0.0, max_tokens=96)
    prompts = [[{"role": "user", "content": EXPAND_PROMPT.replace("{seed}", seed)}] for seed in seeds]
    kept = []
    for seed, reply in zip(seeds, backend.chat_batch(prompts, greedy, 0), strict=True):
        said, written = parse_caption(seed), parse_caption(reply.text)
        assert all(written[a] is not None for a in ("shape", "colour", "position")), reply.text  # a full caption
        kept += [written[a] == v for a, v in said.items() if v is not None]
    assert np.mean(kept) > 0.9  # ... that keeps what the seed said

    captions = [caption(s, variant=0) for s in scenes]
    prompts = [[{"role": "user", "content": QA_PROMPT.replace("{caption}", c)}] for c in captions]
    right, valid = [], 0
    for scene, reply in zip(scenes, backend.chat_batch(prompts, greedy, 0), strict=True):
        turns, _, _ = parse_conversation(reply.text, 2, 5)
        valid += turns is not None
        truth = {q.replace(" ?", "?"): a for _, q, a in question_answers(scene)}  # decoding glues punctuation
        right += [t.answer.rstrip(" .") == truth.get(t.question.replace(" ?", "?")) for t in turns or []]
    assert valid >= 27 and np.mean(right) > 0.9

    prompts = [[{"role": "user", "content": f"{c} {q}"}] for c, s in zip(captions, scenes, strict=True)
               for _, q, _ in question_answers(s)]  # fmt: skip
    truth = [a for s in scenes for _, _, a in question_answers(s)]
    replies = backend.chat_batch(prompts, Sampling(temperature=0.0, max_tokens=8), 0)
    assert np.mean([r.text.rstrip(" .") == a for r, a in zip(replies, truth, strict=True)]) > 0.9


def test_demo_scaling_options_are_refused_before_anything_is_written(tmp_path):
    workdir = tmp_path / "demo"
    refused = run_cli("demo", "--quick", "--scaling", "--scaling-aligner", "bogus", "--workdir", workdir, check=False)
    assert refused.returncode == 2 and "bogus" in refused.stderr and "realign" in refused.stderr, refused.stderr
    refused = run_cli("demo", "--quick", "--scaling-aligner", "realign", "--workdir", workdir, check=False)
    assert refused.returncode == 2 and "only applies with --scaling" in refused.stderr, refused.stderr
    assert not workdir.exists()


def test_demo_on_a_small_world_resumes_tunes_and_scales(tmp_path):
    """The demo's wiring in the default run, on a world small enough for it: every row, the reports, a rerun
    with --sft reusing every finished model, the scaling curves' subset aligners, the workdir guard. (The
    quick demo itself, with its above-chance claims and the embedder section, is the slow test below.)"""
    from modgap.align import load_aligner
    from modgap.errors import ModgapError
    from modgap.store.store import EmbeddingStore
    from modgap.world.demo import DemoSize, run_demo

    workdir, quiet = tmp_path / "demo", (lambda _: None)
    size = DemoSize(image_pool=400, text_pool=600, paired=600, test=80, steps=40, unicorn_seeds=30)
    aligners = ("none", "realign", "gaussian-ot")
    first = run_demo(workdir, size=size, aligners=aligners, log=quiet)
    assert set(first.rows) == {*aligners, "paired images", "unicorn (synthetic text)",
                               "gaussian-ot, validated shrinkage"}  # fmt: skip
    assert all(set(ATTRIBUTES) <= set(row) and 0 <= row["vqa"] <= 1 for row in first.rows.values())
    assert "| realign |" in (workdir / "report.md").read_text()
    assert (workdir / "report.html").read_text().count("data:image/png;base64,") == 2
    again = run_demo(workdir, size=size, aligners=aligners, sft=40, scaling=(4, 8), log=quiet)
    for name, row in first.rows.items():
        assert again.rows[name] == row, name  # reused, not retrained
    assert {f"{m} + sft 40" for m in aligners} | {"sft 40 only"} <= set(again.rows)
    curves = again.scaling
    assert curves["sizes"] == [300, 600] and curves["curves"]["text only, realign"][1] == first.rows["realign"]
    texts = EmbeddingStore.open(workdir / "stores" / "text_pool-text").get([f"text_pool-{i}" for i in range(300)])
    unit = texts.astype(np.float64) / np.linalg.norm(texts.astype(np.float64), axis=1, keepdims=True)
    fitted = load_aligner(workdir / "aligners" / "realign-text300").state["mu_t"]
    np.testing.assert_allclose(np.asarray(fitted, dtype=np.float64), unit.mean(0), atol=1e-6)
    with pytest.raises(ModgapError, match=r"seed \(0 -> 1\)"):
        run_demo(workdir, size=size, aligners=aligners, seed=1, log=quiet)


@pytest.mark.slow
def test_demo_quick_runs_and_the_paired_upper_bound_is_far_above_chance(tmp_path):
    workdir = tmp_path / "demo"
    proc = run_cli("demo", "--quick", "--workdir", workdir)
    assert "paired images" in proc.stdout and "realign" in proc.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["rows"]) == {"none", "mean-shift", "c3", "realign", "gaussian-ot", "paired images",
                                    "unicorn (synthetic text)", "gaussian-ot, validated shrinkage"}  # fmt: skip
    validation = json.loads((workdir / "aligners" / "gaussian-ot-validation.json").read_text())
    assert float(validation["chosen"]) == min(map(float, validation["mmd2"]), key=lambda k: validation["mmd2"][str(k)])
    page = (workdir / "report.html").read_text()  # self-contained: the figures are inlined
    assert page.count("data:image/png;base64,") == 2 and 'src="http' not in page
    assert all(name in page for name in results["rows"])
    assert all(0 <= row["vqa"] <= 1 and "vqa/round" in row for row in results["rows"].values())
    # The Unicorn row was trained on what the built-in LM wrote from 300 sparse seeds: captions and conversations.
    captions = [json.loads(x) for x in (workdir / "unicorn" / "captions.jsonl").read_text().splitlines()]
    conversations = (workdir / "unicorn" / "instructions.jsonl").read_text().splitlines()
    assert len(captions) > 540 and len(conversations) > 0.5 * len(captions)
    assert all(r["seed_id"].startswith("seed-") for r in captions)
    upper = results["rows"]["paired images"]
    chance = chance_levels()
    # Above chance on every attribute and far above it on average (quick mode's short training: shape, the
    # attribute the calibrated encoder's image embeddings hold least, is the weak one).
    lift = {a: (upper[a] - chance[a]) / (1 - chance[a]) for a in ATTRIBUTES}
    assert min(lift.values()) > 0 and np.mean(list(lift.values())) > 0.5, (lift, upper)
    assert results["gap_before"]["centroid_distance"] > 0.1  # the encoder has a real gap
    report = (workdir / "report.md").read_text()
    assert "| realign |" in report and "Chance per attribute" in report

    # Rerun in the same workdir with --sft: finished steps are reused (same figures), only the tuning runs.
    run_cli("demo", "--quick", "--sft", "100", "--workdir", workdir)
    again = json.loads((workdir / "results.json").read_text())
    for name, row in results["rows"].items():
        assert again["rows"][name] == row, name
    for method in ("none", "mean-shift", "c3", "realign", "gaussian-ot", "gaussian-ot, validated shrinkage"):
        tuned = again["rows"][f"{method} + sft 100"]
        assert set(ATTRIBUTES) <= set(tuned) and (workdir / again["runs"][f"{method} + sft 100"] / "model").is_dir()
    assert set(ATTRIBUTES) <= set(again["rows"]["sft 100 only"])  # the same tuning without text pretraining

    # The same workdir with another seed would mix two worlds: refused, nothing touched.
    refused = run_cli("demo", "--quick", "--seed", "1", "--workdir", workdir, check=False)
    assert refused.returncode == 2 and "seed (0 -> 1)" in refused.stderr, refused.stderr
    assert json.loads((workdir / "results.json").read_text()) == again

    # Scaling (two of the four sizes, to keep the suite short), one text curve per aligner: each half-size text
    # model is aligned with its method fitted on exactly the texts it trains on; the full size is the demo's
    # own aligner / paired models.
    from modgap.align import load_aligner
    from modgap.store.store import EmbeddingStore
    from modgap.world.demo import run_demo

    curves = run_demo(workdir, quick=True, scaling=(4, 8), scaling_methods=("realign", "gaussian-ot"),
                      log=lambda _: None).scaling  # fmt: skip
    assert curves["sizes"] == [2000, 4000] and curves["methods"] == ["realign", "gaussian-ot"]
    assert list(curves["curves"]) == ["text only, realign", "text only, gaussian-ot", "paired images"]
    for curve, model in (("text only, realign", "realign"), ("text only, gaussian-ot", "gaussian-ot"),
                         ("paired images", "paired images")):  # fmt: skip
        assert curves["curves"][curve][1] == results["rows"][model]
    assert curves["curves"]["text only, realign"][0] != curves["curves"]["text only, gaussian-ot"][0]
    assert all(set(ATTRIBUTES) <= set(row) for rows in curves["curves"].values() for row in rows)
    texts = EmbeddingStore.open(workdir / "stores" / "text_pool-text").get([f"text_pool-{i}" for i in range(2000)])
    unit = texts.astype(np.float64) / np.linalg.norm(texts.astype(np.float64), axis=1, keepdims=True)
    fitted = load_aligner(workdir / "aligners" / "realign-text2000").state["mu_t"]
    np.testing.assert_allclose(np.asarray(fitted, dtype=np.float64), unit.mean(0), atol=1e-6)
    trained = json.loads((workdir / curves["runs"]["paired images"][0] / "data_report.json").read_text())[0]
    assert trained["rows"] == 2000 and trained["data"].endswith("paired-first-2000.jsonl")
    assert (workdir / "report.html").read_text().count("data:image/png;base64,") == 3

    # The embedder section in the same workdir: the world, stores and the paired model are reused; a small
    # training budget (the demo's own figures are in the README), the real MiniLM teacher.
    from modgap.world.embedder_demo import (
        MINED_VARIANT,
        PATCH_VARIANT,
        STOCK_BASE,
        STOCK_VARIANT,
        VARIANTS,
        EmbedderSize,
        run_embedder_demo,
    )

    small = EmbedderSize(steps=3, batch_size=8, patch_base_steps=20)
    emb = run_embedder_demo(workdir, quick=True, size=small, log=lambda _: None)
    assert set(emb["rows"]) == {"tiny-clip", "base VLM (no embedder training)", *VARIANTS, MINED_VARIANT, PATCH_VARIANT,
                                STOCK_BASE, STOCK_VARIANT}  # fmt: skip
    assert "all_minilm_l6_v2" in emb["teacher"]
    clip = emb["rows"]["tiny-clip"]
    # Chance is ~0.017 both ways; the calibrated encoder's image->text is its weak direction (0.37 measured).
    assert clip["i2t_R@5"] > 0.2 and clip["t2i_R@5"] > 0.5
    assert clip["comp:mean"] > 0.75 and set(clip)  # chance 0.5 >= {"comp:replace-colour", "comp:swap-colour"}
    assert all(0 <= v <= 1 for row in emb["rows"].values() for v in row.values())
    assert run_embedder_demo(workdir, quick=True, size=small)["rows"] == emb["rows"]

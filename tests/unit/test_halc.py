"""HALC's decoding loop on a tiny random LLaVA with the scene world's tokenizer: it reduces to greedy with one
full-image FOV and no contrast, batched FOV passes give the same tokens as sequential ones, and the matching-score
beam keeps the best-scoring expansions."""

from __future__ import annotations

import zlib

import pytest
import torch

from framework.data.lvlm.chat import prompt_ids
from framework.data.lvlm.tokenizer import scene_tokenizer
from framework.decoding.halc import HALCConfig, WordKinds, halc, keep_best, scene_detector
from framework.decoding.loop import greedy
from framework.models.lvlm.model import LVLMConfig, build_lvlm


@pytest.fixture(scope="module")
def tiny():
    tok = scene_tokenizer()
    cfg = LVLMConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
                     text_layers=2, text_heads=2, text_intermediate=64, max_positions=160)  # fmt: skip
    torch.manual_seed(3)
    model = build_lvlm(cfg, len(tok), image_token_id=4, pad_token_id=0, bos_token_id=1, eos_token_id=2).eval()
    prompt = torch.tensor([prompt_ids("Describe the image in detail.", tok, cfg.image_tokens)])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, tok, prompt, pixels


def pseudo_random(ref, texts: list[str]) -> torch.Tensor:
    return torch.tensor([float(zlib.crc32(t.encode()) % 1000) for t in texts])


def run(tiny, cfg: HALCConfig, **kw):
    model, tok, prompt, pixels = tiny
    args = dict(image_ref="img", image_width=32, detector=scene_detector({}), word_kind=WordKinds.scene_world(),
                max_new_tokens=12, eos_id=2)  # fmt: skip
    return halc(model, tok, prompt, pixels, cfg=cfg, **{**args, **kw})


def test_word_kinds_of_the_scene_world() -> None:
    kinds = WordKinds.scene_world()
    assert (kinds("star"), kinds("moon"), kinds("red"), kinds("small"), kinds("two"), kinds("corner")) == (
        "object", "object", "attribute", "attribute", "attribute", "relation")  # fmt: skip
    assert kinds("the") is None and kinds("image") is None


def test_one_full_image_fov_without_contrast_is_greedy(tiny) -> None:
    model, tok, prompt, pixels = tiny
    want = greedy(model, prompt, pixels, max_new_tokens=12, eos_id=2)[0]
    stats: dict[str, int] = {}
    got = run(tiny, HALCConfig(fovs=1, alpha=0.0), detector=lambda ref, word: [0, 0, 32, 32],
              word_kind=lambda w: "object", stats=stats)  # fmt: skip
    assert got == want and stats["grounded"] == stats["steps"] > 0
    # with 4 FOVs, contrast and a matcher choosing among the candidates, it decodes something else (teeth)
    assert run(tiny, HALCConfig(fovs=4, alpha=1.0), word_kind=lambda w: "object", matcher=pseudo_random) != want


def test_batched_fov_passes_give_the_same_tokens_as_sequential(tiny) -> None:
    s_b: dict[str, int] = {}
    s_s: dict[str, int] = {}
    batched = run(tiny, HALCConfig(batched=True, beams=2), stats=s_b)
    sequential = run(tiny, HALCConfig(batched=False, beams=2), stats=s_s)
    assert batched == sequential and s_b["grounded"] > 0
    assert s_s["fov_forwards"] == 4 * s_b["fov_forwards"]


def test_keep_best_orders_by_score_then_candidate() -> None:
    cands = [(0, 5), (0, 7), (1, 5), (1, 9)]
    assert keep_best(cands, torch.tensor([0.1, 0.9, 0.9, 0.5]), 2) == [1, 2]
    assert keep_best(cands, torch.tensor([0.1, 0.9, 0.9, 0.5]), 10) == [1, 2, 3, 0]


def test_the_matching_beam_keeps_the_best_scoring_expansion(tiny) -> None:
    calls: list[list[str]] = []

    def matcher(ref, texts):
        calls.append(texts)
        return pseudo_random(ref, texts)

    model, tok, prompt, pixels = tiny
    stats: dict[str, float] = {}
    text = tok.decode(run(tiny, HALCConfig(beams=1, alpha=1.0), matcher=matcher, stats=stats),
                      skip_special_tokens=True)  # fmt: skip
    assert stats["matcher_calls"] == len(calls) >= 2 and any(len(c) > 1 for c in calls)
    for c in calls:  # the output goes through the best-scoring text of every step that had a choice
        assert text.startswith(max(c, key=lambda t: (zlib.crc32(t.encode()) % 1000, -c.index(t))))
    # a step with one candidate and nothing ending has no choice to make: no matching, and without grounded words
    # HALC is greedy
    calls.clear()
    want = greedy(model, prompt, pixels, max_new_tokens=12, eos_id=2)[0]
    assert run(tiny, HALCConfig(), matcher=matcher, word_kind=lambda w: None) == want and calls == []


def test_cost_accounting_times_every_part(tiny) -> None:
    stats: dict[str, float] = {}
    run(tiny, HALCConfig(beams=2, alpha=1.0), matcher=pseudo_random, stats=stats)
    assert 0 < stats["grounded"] <= stats["steps"] and stats["fov_forwards"] == stats["grounded"]
    assert all(stats[k] > 0 for k in ("base_seconds", "fov_seconds", "detector_seconds", "matcher_seconds"))


def test_the_detector_is_queried_with_the_phrase_or_the_word(tiny) -> None:
    from framework.decoding.halc import grounding_query

    model, tok, _, _ = tiny
    queries: list[str] = []

    def detect(ref, query):
        queries.append(query)
        return None

    for ground in ("phrase", "word"):
        queries.clear()
        out = run(tiny, HALCConfig(ground=ground, alpha=1.0), detector=detect, max_new_tokens=20)
        texts = [tok.decode(out[:i], skip_special_tokens=True) for i in range(len(out) + 1)]
        assert queries and all(WordKinds.scene_world()(q.split()[-1]) for q in queries)
        # every query is the word or phrase of a grounded token after one of the output's prefixes
        assert all(any(grounding_query(t, q.split()[-1], ground) == q for t in texts) for q in queries)
        assert any(len(q.split()) > 1 for q in queries) == (ground == "phrase")


def test_grounding_queries_the_phrase_the_word_ends() -> None:
    from framework.decoding.halc import grounding_query

    text = "there are two objects in the image : a small red"
    assert grounding_query(text, "star") == "small red star"
    assert grounding_query(text + " star in the top", "right") == "small red star in the top right"
    assert grounding_query("there are", "two") == "there are two"
    assert grounding_query(text, "star", "word") == "star"
    with pytest.raises(ValueError, match="ground"):
        HALCConfig(ground="sentence")
    with pytest.raises(ValueError, match="noun"):
        HALCConfig(kinds=("object", "noun"))


def test_only_the_configured_word_kinds_are_grounded(tiny) -> None:
    kinds = WordKinds.scene_world()
    queries: list[str] = []

    def detect(ref, query):
        queries.append(query.split()[-1])
        return None

    run(tiny, HALCConfig(alpha=1.0, kinds=("object",)), detector=detect, max_new_tokens=20)
    assert queries and {kinds(w) for w in queries} == {"object"}
    queries.clear()
    run(tiny, HALCConfig(alpha=1.0), detector=detect, max_new_tokens=20)
    assert {kinds(w) for w in queries} > {"object"}


def test_scene_detector_grounds_words_and_phrases_on_the_best_matching_object() -> None:
    objects = [
        {"name": "star", "color": "red", "size": "small", "cell": "top right", "box": [40, 0, 50, 10]},
        {"name": "circle", "color": "blue", "size": "large", "cell": "bottom left", "box": [0, 40, 20, 60]},
        {"name": "ring", "color": "red", "size": "large", "cell": "center", "box": [20, 20, 40, 40]},
    ]
    detect = scene_detector({"s": objects})
    assert detect("s", "star") == [40, 0, 50, 10] and detect("s", "dot") == [0, 40, 20, 60]  # synonym
    assert detect("s", "heart") is None and detect("t", "star") is None  # not drawn / unknown image
    # a hallucinated object grounds on what its phrase matches: the large red thing is the ring
    assert detect("s", "large red heart") == [20, 20, 40, 40]
    assert detect("s", "red") == [40, 0, 50, 10]  # ties: the first in the annotation
    assert detect("s", "small red ring") == [20, 20, 40, 40]  # the name outweighs one attribute
    assert detect("s", "large ring in the bottom left") == [20, 20, 40, 40]
    assert detect("s", "small heart in the bottom") == [40, 0, 50, 10]  # size 1 = position 1: first
    assert detect("s", "heart in the bottom") == [0, 40, 20, 60]  # "bottom" is among "bottom left"'s words
    assert detect("s", "there are three") == [0, 0, 50, 60]  # a count: all objects
    assert detect("s", "in the") is None


def test_clip_matcher_is_the_cosine_of_the_embeddings() -> None:
    from PIL import Image

    from framework.data.clip.image_ops import preprocess
    from framework.data.clip.tokenizer import build_tokenizer
    from framework.decoding.halc import clip_matcher
    from framework.models.clip.model import CLIP, tiny_clip_config

    torch.manual_seed(0)
    clip = CLIP(tiny_clip_config(vocab_size=259, context_length=40)).eval()
    tok = build_tokenizer("byte", 40)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    match = clip_matcher(clip, tok, {"a": image}, 32)
    texts = ["a red square", "a blue star", "two objects"]
    got = match("a", texts)
    with torch.no_grad():
        b = tok(texts)
        want = clip.encode_text(b.tokens_BL, b.eot_index_B) @ clip.encode_image(preprocess(image, 32)[None])[0]
    torch.testing.assert_close(got, want)
    assert got.shape == (3,) and bool((got.abs() <= 1 + 1e-5).all())


def test_zero_shot_detector_adapter_plumbing_with_a_tiny_random_owlv2() -> None:
    from PIL import Image
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    from framework.decoding.detectors import ZeroShotDetector

    try:
        from transformers import Owlv2ImageProcessorPil as Processor
    except ImportError:  # older transformers: the PIL processor is the default one
        from transformers import Owlv2ImageProcessor as Processor
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    cfg = Owlv2Config(text_config={**tiny, "vocab_size": 100, "max_position_embeddings": 16, "bos_token_id": 1,
                                   "eos_token_id": 2},
                      vision_config={**tiny, "image_size": 64, "patch_size": 16}, projection_dim=32)  # fmt: skip
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(cfg)
    queries: list[list[str]] = []

    def tokenize(texts):
        queries.append(texts)
        ids = torch.tensor([[1, *[3 + len(w) % 90 for w in t.split()], 2] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    image = Image.new("RGB", (80, 60), (200, 10, 10))
    detect = ZeroShotDetector(model, Processor(size={"height": 64, "width": 64}), tokenize, threshold=0.0,
                              images={"s": image})  # fmt: skip
    box = detect("s", "star")
    assert queries == [["a photo of a star"]]
    # the same computation by hand: best box on the padded 80 x 80 square, clipped to the 80 x 60 image
    proc = Processor(size={"height": 64, "width": 64})
    with torch.no_grad():
        out = model(**tokenize(["a photo of a star"]), pixel_values=proc(images=image, return_tensors="pt")[
            "pixel_values"])  # fmt: skip
    res = proc.post_process_object_detection(out, threshold=0.0, target_sizes=torch.tensor([[80, 80]]))[0]
    x0, y0, x1, y1 = res["boxes"][int(res["scores"].argmax())].tolist()
    want = [max(0.0, x0), max(0.0, y0), min(80.0, x1), min(60.0, y1)]
    assert box == (want if want[2] > want[0] and want[3] > want[1] else None)
    assert ZeroShotDetector(model, Processor(size={"height": 64, "width": 64}), tokenize, threshold=1.1)(
        image, "star") is None  # fmt: skip


def test_zero_shot_detector_adapter_plumbing_with_a_tiny_random_grounding_dino() -> None:
    from PIL import Image
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    from framework.decoding.detectors import ZeroShotDetector

    try:
        from transformers import GroundingDinoImageProcessorPil as Processor
    except ImportError:  # older transformers: the PIL processor is the default one
        from transformers import GroundingDinoImageProcessor as Processor
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=4,
                          out_indices=[1, 2])  # fmt: skip
    text = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32)  # fmt: skip
    cfg = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                              decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                              decoder_attention_heads=2, num_queries=10, num_feature_levels=2, encoder_n_points=2,
                              decoder_n_points=2, max_text_len=16, use_timm_backbone=False,
                              use_pretrained_backbone=False)  # fmt: skip
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(cfg)

    def tokenize(texts):
        ids = torch.tensor([[101 % 200, *[3 + len(w) % 90 for w in t.split()], 102 % 200] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    image = Image.new("RGB", (80, 60), (10, 200, 10))
    proc = Processor(size={"shortest_edge": 48, "longest_edge": 64})
    detect = ZeroShotDetector(model, proc, tokenize, threshold=0.0, prompt="{} .", images={"s": image})
    assert detect.pad_to_square is False
    box = detect("s", "small red star")
    # by hand: no square padding, so boxes are mapped onto the 80 x 60 image itself
    with torch.no_grad():
        out = model(**tokenize(["small red star ."]), **proc(images=image, return_tensors="pt"))
    res = proc.post_process_object_detection(out, threshold=0.0, target_sizes=torch.tensor([[60, 80]]))[0]
    x0, y0, x1, y1 = res["boxes"][int(res["scores"].argmax())].tolist()
    want = [max(0.0, x0), max(0.0, y0), min(80.0, x1), min(60.0, y1)]
    assert box == (want if want[2] > want[0] and want[3] > want[1] else None) and box is not None

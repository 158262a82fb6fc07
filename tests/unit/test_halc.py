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
    detect = scene_detector({"s1": [{"name": "star", "box": [1, 2, 9, 12]}]})
    assert detect("s1", "star") == [1, 2, 9, 12] and detect("s1", "ring") is None and detect("s2", "star") is None


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

    model, tok, _, _ = tiny
    out = run(tiny, HALCConfig(beams=1, alpha=1.0), matcher=matcher)
    best = [max(c, key=lambda t: (zlib.crc32(t.encode()) % 1000, -c.index(t))) for c in calls]
    assert len(calls) >= 2 and any(len(c) > 1 for c in calls)  # some steps had several candidates
    for prev, nxt in zip(best, calls[1:], strict=False):
        assert all(t.startswith(prev) for t in nxt)  # every next step extends the best-scoring text
    assert tok.decode(out, skip_special_tokens=True) == best[len(calls) - 1] or len(out) < len(calls)


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

"""The LVLM hallucination evaluation end to end on a tiny world and a tiny random model: what it generates is
scored by CHAIR / POPE exactly as the metrics would score it, and the example figure is written."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from framework.data.lvlm.dataset import read_split
from framework.data.lvlm.scenes import build_scene_world, vocabulary
from framework.data.lvlm.tokenizer import scene_tokenizer
from framework.evaluation.lvlm_eval import evaluate_lvlm, plot_examples
from framework.metrics.hallucination import chair, pope_metrics
from framework.models.lvlm.model import LVLMConfig, build_lvlm


def tiny_model(tok) -> tuple[LVLMConfig, torch.nn.Module]:
    """A tiny random LLaVA over the scene tokenizer (seed 0)."""
    cfg = LVLMConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
                     text_layers=1, text_heads=2, text_intermediate=64, max_positions=160)  # fmt: skip
    torch.manual_seed(0)
    return cfg, build_lvlm(cfg, len(tok), image_token_id=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def test_evaluate_lvlm_scores_what_it_generates(tmp_path: Path) -> None:
    build_scene_world(tmp_path, 20, 12, seed=1, progress=False)
    tok = scene_tokenizer()
    cfg, model = tiny_model(tok)
    out = evaluate_lvlm(model, tok, tmp_path, image_size=32, image_tokens=cfg.image_tokens, limit=8,
                        max_new_tokens=12, batch_size=3)  # fmt: skip
    assert out["captions"] == 8 and len(out["examples"]) == 8
    assert out["description_seconds"] > 0 and out["pope_seconds"] > 0
    samples = read_split(tmp_path, "eval", 8)
    truth = {s["id"]: [o["name"] for o in s["annotation"]["objects"]] for s in samples}
    again = chair({e["id"]: e["caption"] for e in out["examples"]}, truth, vocabulary())
    assert (again["chair_s"], again["chair_i"], again["recall"]) == (out["chair_s"], out["chair_i"], out["recall"])
    ids = {s["id"] for s in samples}
    for mode, m in out["pope"].items():
        qs = [q for q in map(json.loads, (tmp_path / "pope" / f"{mode}.jsonl").read_text().splitlines())
              if q["image"] in ids]  # fmt: skip
        assert m["questions"] == len(qs) > 0 and 0 <= m["f1"] <= 1
        records = out["pope_answers"][mode]
        assert [(r["image"], r["object"], r["label"]) for r in records] == [(q["image"], q["object"], q["label"])
                                                                            for q in qs]  # fmt: skip
        assert pope_metrics([r["answer"] for r in records], [r["label"] for r in records]) == m
    # Batching does not change greedy outputs: one at a time gives the same captions.
    single = evaluate_lvlm(model, tok, tmp_path, image_size=32, image_tokens=cfg.image_tokens, limit=8,
                           max_new_tokens=12, batch_size=1)  # fmt: skip
    assert [e["caption"] for e in single["examples"]] == [e["caption"] for e in out["examples"]]
    plot_examples(out["examples"], {s["id"]: s["image"] for s in samples}, tmp_path / "examples.png", n=4)
    assert (tmp_path / "examples.png").stat().st_size > 5000


def test_evaluation_decodes_with_beam_and_vcd(tmp_path: Path) -> None:
    from framework.decoding.loop import VCDConfig, beam_search, vcd
    from framework.evaluation.lvlm_eval import generate

    build_scene_world(tmp_path, 4, 4, seed=1, progress=False)
    tok = scene_tokenizer()
    cfg, model = tiny_model(tok)
    from framework.data.clip.image_ops import preprocess
    from framework.data.lvlm.chat import prompt_ids

    pixels = torch.stack([preprocess(s["image"], 32) for s in read_split(tmp_path, "eval", 2)])
    prompt = prompt_ids("Describe the image in detail.", tok, cfg.image_tokens)
    ids = torch.tensor([prompt, prompt])
    for decoding in ("beam", "vcd"):
        got = generate(model, tok, [prompt, prompt], pixels, 10, decoding=decoding)
        if decoding == "vcd":
            want = vcd(model, ids, pixels, VCDConfig(), max_new_tokens=10, eos_id=2)
        else:
            want = [beam_search(model, ids[b : b + 1], pixels[b : b + 1], k=3, max_new_tokens=10, eos_id=2)
                    for b in range(2)]  # fmt: skip
        assert got == [tok.decode(w, skip_special_tokens=True) for w in want]
        out = evaluate_lvlm(model, tok, tmp_path, image_size=32, image_tokens=cfg.image_tokens, limit=2,
                            max_new_tokens=10, decoding=decoding)  # fmt: skip
        assert out["decoding"] == decoding and out["captions"] == 2 and set(out["pope"]) == {
            "random", "popular", "adversarial"}  # fmt: skip


def test_evaluation_decodes_with_halc_grounded_on_the_annotated_boxes(tmp_path: Path) -> None:
    from framework.decoding.halc import HALCConfig

    build_scene_world(tmp_path, 4, 3, seed=1, progress=False)
    tok = scene_tokenizer()
    cfg, model = tiny_model(tok)
    seen: list[str] = []

    def factory(samples):
        def match(ref, texts):
            seen.append(ref)
            return -torch.tensor([float(len(t)) for t in texts])  # prefers short texts

        return match

    out = evaluate_lvlm(model, tok, tmp_path, image_size=32, image_tokens=cfg.image_tokens, limit=3,
                        max_new_tokens=8, decoding="halc", matcher=factory, halc_cfg=HALCConfig(alpha=1.0))  # fmt: skip
    assert out["decoding"] == "halc" and out["captions"] == 3
    assert out["halc_stats"]["steps"] > 0 and set(seen) <= {s["id"] for s in read_split(tmp_path, "eval", 3)}
    assert set(out["pope"]) == {"random", "popular", "adversarial"}

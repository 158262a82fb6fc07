"""The tiny LLaVA LVLM built from a config, and the LLaVA-1.5 conversation encoding with answer-only labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from framework.data.clip.image_ops import preprocess
from framework.data.lvlm.chat import IGNORE, collate, encode_conversation, prompt_ids
from framework.data.lvlm.scenes import render_scene
from framework.data.lvlm.tokenizer import scene_tokenizer
from framework.models.lvlm.model import LVLMConfig, build_lvlm, lvlm_parts

CFG = LVLMConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
                 text_layers=1, text_heads=2, text_intermediate=64, max_positions=128)  # fmt: skip


def _model(tok):
    torch.manual_seed(0)
    return build_lvlm(CFG, len(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)  # fmt: skip


def test_conversation_labels_are_the_answers_only() -> None:
    tok = scene_tokenizer()
    _, scene = render_scene(0, "train", 3)
    ids, labels = encode_conversation(scene.conversations, tok, CFG.image_tokens, 256)
    assert len(ids) == len(labels) and ids[0] == tok.bos_token_id
    assert ids.count(tok.convert_tokens_to_ids("<image>")) == CFG.image_tokens == 16
    answers = [t["value"] for t in scene.conversations[1::2]]
    kept = [t for t in labels if t != IGNORE]
    want = [i for a in answers for i in [*tok(a, add_special_tokens=False)["input_ids"], tok.eos_token_id]]
    assert kept == want
    assert all(ids[k] == lab for k, lab in enumerate(labels) if lab != IGNORE)
    with pytest.raises(ValueError, match="turn 1: expected from='gpt'"):
        encode_conversation([scene.conversations[0], scene.conversations[0]], tok, 16, 256)
    with pytest.raises(ValueError, match="exceeds max_length"):
        encode_conversation(scene.conversations, tok, 16, 20)


def test_lvlm_forward_loss_is_answer_token_cross_entropy_and_generates() -> None:
    tok = scene_tokenizer()
    model = _model(tok)
    scenes = [render_scene(0, "train", i) for i in range(2)]
    batch = collate([encode_conversation(s.conversations, tok, CFG.image_tokens, 128) for _, s in scenes],
                    tok.pad_token_id)  # fmt: skip
    pixels = torch.stack([preprocess(img, CFG.image_size) for img, _ in scenes])
    out = model(**batch, pixel_values=pixels)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    manual = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
    torch.testing.assert_close(out.loss, manual)
    out.loss.backward()
    parts = lvlm_parts(model)
    for name, part in parts.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), name
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for part in parts.values() for p in part.parameters())
    prompt = torch.tensor([prompt_ids("Describe the image in detail.", tok, CFG.image_tokens)])
    gen = model.generate(input_ids=prompt, pixel_values=pixels[:1], max_new_tokens=5, do_sample=False)
    assert gen.shape[1] <= prompt.shape[1] + 5 and torch.equal(gen[:, : prompt.shape[1]], prompt)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="multiple of patch_size"):
        LVLMConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="max_positions"):
        LVLMConfig(image_size=64, patch_size=4, max_positions=200)


def _batch(tok, n: int = 2):
    scenes = [render_scene(0, "train", i) for i in range(n)]
    batch = collate([encode_conversation(s.conversations, tok, CFG.image_tokens, 128) for _, s in scenes],
                    tok.pad_token_id)  # fmt: skip
    return batch, torch.stack([preprocess(img, CFG.image_size) for img, _ in scenes])


def test_lora_trains_only_adapters_and_projector_and_merges() -> None:
    from framework.models.lvlm.lora import LoRAConfig, apply_lora, merged_model, parameter_groups

    tok = scene_tokenizer()
    model = apply_lora(_model(tok), LoRAConfig(r=4, alpha=8, dropout=0.0))
    groups = parameter_groups(model)
    assert groups["lora"] and groups["projector"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "multi_modal_projector" in n for n in trainable)
    # every linear layer of the language model got an adapter: 7 per Llama layer (q k v o gate up down)
    assert sum(".lora_A." in n for n in trainable) == 7 * CFG.text_layers
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([{"params": groups["lora"], "lr": 1e-2}, {"params": groups["projector"], "lr": 1e-3}])
    batch, pixels = _batch(tok)
    for _ in range(3):
        opt.zero_grad()
        model(**batch, pixel_values=pixels).loss.backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == trainable  # frozen weights bit-identical; every adapter and projector tensor moved
    model.eval()
    with torch.no_grad():
        want = model(**batch, pixel_values=pixels).logits
        got = merged_model(model)(**batch, pixel_values=pixels).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_lora_targets_are_configurable_and_checked() -> None:
    from framework.models.lvlm.lora import LoRAConfig, apply_lora

    tok = scene_tokenizer()
    model = apply_lora(_model(tok), LoRAConfig(r=2, alpha=4, targets=("q_proj", "v_proj"), train_projector=False))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in trainable)
    with pytest.raises(ValueError, match=r"lora.targets \['qkv'\] match no linear layer"):
        apply_lora(_model(tok), LoRAConfig(targets=("qkv",)))

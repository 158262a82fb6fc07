"""LLaVA-1.5 conversation template, tokenized with loss labels on the assistant's answers only.

``<s>USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT: {answer}</s>...``
(LLaVA's ``v1`` template without the system prompt). ``<image>`` becomes ``image_tokens`` copies of the image token
id; labels are -100 everywhere except the answer tokens and their ``</s>`` (what the model must produce). Prompts
for generation end after ``ASSISTANT:``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE = -100


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _expand(ids: list[int], image_id: int, image_tokens: int) -> list[int]:
    out: list[int] = []
    for i in ids:
        out += [image_id] * image_tokens if i == image_id else [i]
    return out


def encode_conversation(
    conversation: Sequence[dict[str, str]], tokenizer, image_tokens: int, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a LLaVA-format conversation (alternating ``human`` / ``gpt`` turns)."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids, labels = [tokenizer.bos_token_id], [IGNORE]
    for k, turn in enumerate(conversation):
        want = "human" if k % 2 == 0 else "gpt"
        if turn.get("from") != want:
            raise ValueError(f"turn {k}: expected from={want!r}, got {turn.get('from')!r}")
        if want == "human":
            part = _expand(_ids(tokenizer, f"user : {turn['value']} assistant :"), image_id, image_tokens)
            ids += part
            labels += [IGNORE] * len(part)
        else:
            part = [*_ids(tokenizer, turn["value"]), tokenizer.eos_token_id]
            ids += part
            labels += part
    if len(ids) > max_length:
        raise ValueError(f"conversation of {len(ids)} tokens exceeds max_length {max_length}")
    return ids, labels


def prompt_ids(question: str, tokenizer, image_tokens: int) -> list[int]:
    """A generation prompt: ``<s>USER: <image>\n{question} ASSISTANT:`` with the image expanded."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    text = f"user : <image>\n{question} assistant :"
    return [tokenizer.bos_token_id, *_expand(_ids(tokenizer, text), image_id, image_tokens)]


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / labels / attention_mask [B, L]."""
    L = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), L), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for b, (ids, lab) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(lab)] = torch.tensor(lab)
        mask[b, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}

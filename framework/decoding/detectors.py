"""Detectors for HALC's grounding: a transformers zero-shot detector adapter (OWLv2 / OWL-ViT / Grounding DINO:
model + image processor + text tokenizer, e.g. from local weights with :meth:`ZeroShotDetector.from_pretrained`)
beside the scene world's oracle (:func:`framework.decoding.halc.scene_detector`). A detector is ``(image
reference, query) -> box | None`` with the box [x0, y0, x1, y1] in the original image's pixels; the query is a word
or the phrase it ends (:func:`framework.decoding.halc.grounding_query`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch


class ZeroShotDetector:
    """The highest-scoring box of a text-queried zero-shot detector (``"a photo of a {query}"``), clipped to the
    image; None below ``threshold`` or for a box without area.

    Args:
        model: e.g. ``Owlv2ForObjectDetection``, ``OwlViTForObjectDetection`` or
            ``GroundingDinoForObjectDetection``; called with the tokenized query and the image processor's outputs.
        image_processor: its image processor (``post_process_object_detection`` maps boxes to pixels).
        tokenize: texts -> dict of ``input_ids`` / ``attention_mask`` tensors (the processor's tokenizer).
        prompt: the query's template (Grounding DINO expects lower-case phrases ending in " .": ``"{} ."``).
        images: image reference -> PIL image (None: the reference is the image itself).
        pad_to_square: boxes are relative to the image padded to a square (OWLv2's processor pads; OWL-ViT and
            Grounding DINO do not). None: True for an OWLv2 image processor.
    """

    def __init__(self, model: Any, image_processor: Any, tokenize: Callable[[list[str]], Mapping[str, torch.Tensor]],
                 *, threshold: float = 0.1, prompt: str = "a photo of a {}",
                 images: Mapping[Any, Any] | None = None, pad_to_square: bool | None = None) -> None:  # fmt: skip
        self.model, self.image_processor, self.tokenize = model.eval(), image_processor, tokenize
        self.threshold, self.prompt, self.images = threshold, prompt, images
        if pad_to_square is None:
            pad_to_square = type(image_processor).__name__.startswith("Owlv2")
        self.pad_to_square = pad_to_square

    @classmethod
    def from_pretrained(cls, path: str | Path, **kw: Any) -> ZeroShotDetector:
        """From local weights only (no hub here): a directory with the model and its processor."""
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True)
        return cls(model, processor.image_processor,
                   lambda texts: processor.tokenizer(texts, padding=True, return_tensors="pt"), **kw)  # fmt: skip

    @torch.no_grad()
    def __call__(self, ref: Any, query: str) -> list[float] | None:
        image = self.images[ref] if self.images is not None else ref
        width, height = image.size
        inputs = dict(self.image_processor(images=image, return_tensors="pt"))
        text = dict(self.tokenize([self.prompt.format(query)]))
        out = self.model(**text, **inputs)
        side = max(width, height)
        size = [side, side] if self.pad_to_square else [height, width]
        res = self.image_processor.post_process_object_detection(out, threshold=self.threshold,
                                                                 target_sizes=torch.tensor([size]))[0]  # fmt: skip
        if res["scores"].numel() == 0:
            return None
        x0, y0, x1, y1 = res["boxes"][int(res["scores"].argmax())].tolist()
        box = [max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)]
        return box if box[2] > box[0] and box[3] > box[1] else None

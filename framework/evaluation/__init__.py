"""Model evaluation suites (separate from training metrics in :mod:`framework.metrics`)."""

from framework.evaluation.clip_eval import (
    DEFAULT_TEMPLATES,
    ImageFolderDataset,
    embed_images,
    embed_texts,
    evaluate_clip,
    format_eval_table,
    linear_probe,
    load_labeled_root,
    pair_metrics,
    plot_modality_gap,
    zero_shot_classifier,
    zero_shot_eval,
    zero_shot_scores,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "ImageFolderDataset",
    "embed_images",
    "embed_texts",
    "evaluate_clip",
    "format_eval_table",
    "linear_probe",
    "load_labeled_root",
    "pair_metrics",
    "plot_modality_gap",
    "zero_shot_classifier",
    "zero_shot_eval",
    "zero_shot_scores",
]

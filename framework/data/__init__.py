"""Data pipelines, one package per family: :mod:`framework.data.ranking` (MovieLens, generated logs, histories),
:mod:`framework.data.clip` (image-caption shards, tokenizers); :mod:`framework.data.errors` is shared."""

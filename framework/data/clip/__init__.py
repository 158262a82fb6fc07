"""Image-caption data: WebDataset shards (writer and streaming loader), caption tokenizers, image ops, the offline
demo set."""

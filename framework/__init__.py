"""scalefirst framework: config, distributed, data, models, metrics, trainers, checkpoint."""

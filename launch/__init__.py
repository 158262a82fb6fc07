"""Entry points: torchrun module (launch.train) and the `scalefirst` console script (launch.cli)."""

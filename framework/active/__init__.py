"""Active learning and data valuation: the loop, baselines, DAO, BMMAL, MMCSAL (issue 10; in progress)."""

"""`make bench`: the broker measured against baselines in the same run (issue 5)."""

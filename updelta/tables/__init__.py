"""Records to DataFrames: results, aggregates, typed metadata, trajectories, evaluations (torch-free)."""

"""Training engine: recipes, optimisers, schedules, the loop, checkpoints, distributed."""

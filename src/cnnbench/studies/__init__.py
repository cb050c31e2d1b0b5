"""Studies: recipes (YAML) that reproduce the seed reports, with their published numbers."""

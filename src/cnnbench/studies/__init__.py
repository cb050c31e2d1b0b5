"""Studies: recipes (YAML) that reproduce the seed reports, with their published numbers.

``load_study(name)`` reads one study folder; ``run_study`` (``cnnbench.studies.runner``) trains
its experiments and writes the published-vs-ours report; ``cnnbench.studies.tune`` searches a
recipe's hyper-parameters with Optuna.
"""

from cnnbench.studies.catalog import PublishedRow, Study, list_studies, load_study

__all__ = ["PublishedRow", "Study", "list_studies", "load_study"]

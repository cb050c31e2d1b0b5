"""Command groups of the ``cnnbench`` CLI, one module each (see ``cnnbench.cli``)."""

"""Evaluation: metrics, predictions, ensembles/TTA, diagnostics."""

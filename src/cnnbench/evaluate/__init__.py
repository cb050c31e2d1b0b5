"""Evaluation: metrics, predictions, ensembles/TTA, diagnostics.

    runs.py          read a run folder (metrics.csv, summary.json, classes.json, recipe.yaml, evaluate/)
    metrics.py       loss, top-k, per-class accuracy, confusion from (N, K) log-probabilities (numpy)
    diagnostics.py   best epoch, train-val gaps, "val loss rising since ...", not-learning and sanity flags
    significance.py  McNemar's paired test (exact binomial for few discordant images)
    inference.py     checkpoint -> model checked against its run folder; split -> log-probabilities (TTA)
    evaluation.py    evaluate a run, an ensemble of runs, a run's cyclic snapshots -> one flat row
    results.py       what an evaluation writes under evaluate/ and how reports read it back
    predict.py       top-k for image files; challenge submission files
    export.py        ONNX export checked with onnxruntime
"""

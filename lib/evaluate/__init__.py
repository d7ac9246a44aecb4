"""Evaluation: scores of predictions against ground truth, and the charts and tables of a run.

Modules:

- ``metrics``: NumPy pixel, object and threshold-sweep metrics, streamed over a test set
- ``evaluation``: a test set predicted with every enabled variant, one item at a time, saved and scored
- ``reports``: charts, tables, ``metrics.json`` and ``JOB_DIR/summary.csv``

May import: :mod:`lib.errors`, :mod:`lib.config`, :mod:`lib.data`, :mod:`lib.model`,
:mod:`lib.predict`.
"""

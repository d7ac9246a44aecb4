"""The shared library of the EM segmentation toolkit, one subpackage per stage of a run.

Stages, bottom to top; a stage imports only the stages below it (``tests/test_layers.py`` checks it):

=================  ==========================================================================
``errors``,        the one exception type that reaches users, the option schema (sections,
``config``,        defaults, checks, ``--set``) and progress bars that suit a terminal and a log;
``progress``       they import nothing else of lib
``data``           files, stores and volumes; dataset folders; normalisation, splits, crops and
                   tiles; augmentation; the training batches; synthetic data
``model``          networks (2D and 3D from one code path), losses, optimisers, Keras metrics,
                   precision, saving and loading models
``train``          the training loop: schedules, fine-tuning, checkpoints, resume, TensorBoard
``predict``        tiled and block-wise prediction (in process or on Dask), post-processing,
                   output stores
``evaluate``       NumPy metrics, evaluation of a test set, charts and reports
``run``            the command line, devices, run folders, the one runner every entry script
                   calls, the steps of ``templates/predict.py``, Model Zoo export, the
                   neuroglancer server
``napari``         the napari plugin (optional: ``make napari``): a reader and widgets that start
                   the command line's scripts; nothing of lib imports it
=================  ==========================================================================

Only ``run`` knows option names in its messages, run folders and the command line; lower stages
raise errors that name their own parameters (:func:`lib.errors.options` turns those into option
names), or take their own configuration section.

``from lib import cli, runner``, as templates copied from releases before this layout import them,
still gives :mod:`lib.run.cli` and :mod:`lib.run.runner`.
"""

# Modules of the earlier flat layout that copied templates import by name.
_MOVED = {"cli": "lib.run.cli", "runner": "lib.run.runner"}


def __getattr__(name):
    if name in _MOVED:
        import importlib

        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'lib' has no attribute {name!r}")

"""Run: the top of the library, which knows the command line, option names and run folders.

Modules:

- ``cli``: the command line of every entry script, and ``user_errors`` (one ``error:`` line, exit 2)
- ``devices``: ``--gpu``, ``--threads``, precision, several devices, seeds (Keras-free at import)
- ``folders``: run folders ``JOB_DIR/<id>_<rid>/``: checks, creation, resume, ``environment.json``
- ``paths``: what a command writes, kept apart from what it reads (overlapping paths refused)
- ``runner``: ``run``, the one order of a run's steps that every template and paper script calls
- ``datasets``, ``training_data``: a run's data read and checked against its options, and split
- ``record``: what a run folder records beside training, and the end-of-run report
- ``predicting``: the steps of ``templates/predict.py``
- ``export``: a run as a BioImage Model Zoo package (``python -m lib.run.export``)
- ``options``: the option reference (``python -m lib.run.options``)

May import every other stage. Nothing below imports it.
"""

"""The napari plugin (optional: ``make napari``, see docs/napari.md): a thin layer over the command line.

Modules:

- ``layers``: the outputs of the toolkit as napari layer data (no napari import): a run folder (test images,
  probabilities, masks, objects) and a predict.py output store (each image a pyramid, with its scale); the
  plugin's reader
- ``jobs``: what the widgets run, as the command line runs it (no napari import): predict.py and the
  templates in a subprocess, a layer's data as their input, their progress read from their outputs
- ``widgets``: the Segment and Train widgets (Qt)
- ``napari.yaml``: the npe2 manifest

May import every stage below it; nothing of lib imports it. The widgets start ``templates/predict.py`` and the
templates as a user would in bash, so what the viewer shows is what the command line writes, and a run or a
prediction started in the viewer is resumed from bash (or the viewer) after a cancel or a crash.
"""

"""Prediction: probabilities of whole images and volumes of any size, and masks made from them.

Modules:

- ``inference``: merged crops, blended tiles and test-time augmentation of one image or volume
- ``blockwise``: volumes larger than memory, block by block, in process or on a Dask cluster
- ``postprocess``: thresholds, most probable class, z filter, Oztel et al.'s boundary refinement
- ``instances``: objects: connected components of a mask, or grown from seeds of instance channels, in memory
  or block-wise in a store of any size
- ``writers``: the OME-Zarr output stores of block-wise prediction and their TIFF exports

May import: :mod:`lib.errors`, :mod:`lib.config`, :mod:`lib.data`, :mod:`lib.model` (the model
is loaded and its precision set where the prediction runs). Takes arrays and plain values.
"""

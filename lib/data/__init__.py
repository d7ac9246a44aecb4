"""Data: everything between files on disk and the arrays a network trains on or predicts.

Modules:

- ``io``: image files: listing, reading (whole, by page, by window), atomic writes of TIFF, text, CSV
- ``layout``: the dataset folder ``DATA_DIR/{train,test}/{x,y}``: discovery, pairing, loading
- ``volumes``: images and volumes of any size read lazily (TIFF, slice folders, zarr, OME-Zarr, HDF5)
- ``disk``: images and masks read window by window; ``scanning``: one pass over them for statistics
- ``sets``: the loaded data of a run (in memory or on disk)
- ``intensity``: normalisation and clipping; ``splits``: training/validation splits
- ``tiling``: crop and tile grids, cutting, padding, merging, crop sampling
- ``weightmaps``: U-Net weight maps
- ``targets``: instance targets (foreground, contour, distance) of a label image
- ``augment``: paired image/mask augmentation, 2D and 3D
- ``generators``: training batches as ``keras.utils.PyDataset`` (imports Keras)
- ``synthetic``: small synthetic EM data sets (``python -m lib.data.synthetic``)

May import: :mod:`lib.errors`, :mod:`lib.config`. Takes arrays and plain values, never a
configuration; raises ``ValueError`` or :class:`lib.errors.UserError` naming its own parameters
or the file at fault.
"""

"""Block-wise prediction of images and volumes of any size, in-process or on a Dask cluster.

The volume is cut into blocks aligned to the output chunks. Each block is
predicted with :func:`lib.predict.inference.predict_tiled` restricted to the block
(``core``): the tiles of the *whole* volume's grid that overlap the block are
read (the block plus a halo of about the tile overlap), predicted and blended,
so the block's probabilities equal those of whole-volume tiled prediction. A
z-filter widens the predicted box by its radius along z. Only the block's core
is written, then its flag in ``blocks_done``: a rerun after a kill skips the
flagged blocks. Memory follows the block shape, not the volume.

A 2D model (2 tile sizes) predicts a volume slice by slice; a 3D model by
subvolumes. Normalisation matches training (:func:`lib.data.intensity.normalize`):
``per_image`` is the min-max of each slice for a 2D model (each training image
was one slice) and of the whole volume for a 3D model, from a streaming pass
(:func:`intensity_ranges`); ``zscore`` uses the training mean and std.
"""

import contextlib
import functools
import itertools
import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..data.intensity import clip_bounds, normalize
from ..progress import bar as progress_bar
from . import writers
from .inference import make_predictor, predict_tiled, tile_progress, tiled_inputs
from .postprocess import binarize, most_probable, z_filter

RETRIES = 2  # a block whose task fails (a lost worker, an I/O error) is tried this many more times


def output_chunks(block, shape=None):
    """Chunk shape of the outputs for a spatial ``block`` shape: blocks are whole numbers of chunks.

    At most 64 slices along z and 256 pixels along y and x per chunk (sizes that
    viewers read quickly); an axis whose block size is no multiple of that is one chunk per block,
    unless the block spans the whole axis of the volume's spatial ``shape`` (then no two blocks
    share the last, partial chunk).
    """
    limits = (64, 256, 256)[3 - len(block):]
    whole = [False] * len(block) if shape is None else [b >= s for b, s in zip(block, shape)]
    return tuple(min(b, c) if b % min(b, c) == 0 or w else b for b, c, w in zip(block, limits, whole))


def block_grid(shape, block):
    """The blocks of a spatial ``shape``: ``(counts per axis, [(index, core slices), ...])`` in C order.

    Blocks at the end of an axis are cut at the volume's border.
    """
    if len(block) != len(shape) or any(b < 1 for b in block):
        raise ValueError(f"block: expected {len(shape)} positive sizes, got {block}")
    counts = tuple(-(-s // b) for s, b in zip(shape, block))
    blocks = [(index, tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, block, shape)))
              for index in itertools.product(*(range(n) for n in counts))]
    return counts, blocks


@dataclass(frozen=True)
class Normalization:
    """How raw pixels become network input: ``lib.data.intensity.normalize`` with per-slice or global statistics.

    ``method`` is ``per_image``, ``dtype_max``, ``zscore`` or ``fixed``; ``offset`` and
    ``scale`` are one number, or one per z slice (``per_image`` with a 2D model),
    with ``(x - offset) / scale`` the normalised value; ``clip``: the levels ``[low, high]``
    raw pixels are clipped to first (``data.clip_percentiles``), or None.
    """

    method: str
    offset: object = 0.0
    scale: object = 1.0
    clip: object = None

    @classmethod
    def from_ranges(cls, lows, highs, per_slice, clip=None, dtype=None):
        """``per_image`` from the minimum and maximum of each slice (``per_slice``) or of all of them.

        With ``clip`` (and the raw ``dtype``), the extremes are those of the clipped pixels.
        """
        if clip is not None:
            low, high = (float(b) for b in clip_bounds(clip, dtype))
            lows = [min(max(lo, low), high) for lo in lows]
            highs = [min(max(hi, low), high) for hi in highs]
        if not per_slice:
            lows, highs = [min(lows)], [max(highs)]
        offsets = tuple(float(lo) for lo in lows)
        scales = tuple(float(hi - lo) if hi > lo else 1.0 for lo, hi in zip(lows, highs))
        return cls("per_image", offsets if per_slice else offsets[0], scales if per_slice else scales[0], clip)

    def apply(self, raw, z=None):
        """Normalised float32 pixels; ``z``: the slice index, for per-slice statistics."""
        if self.method == "dtype_max":
            return normalize(raw, "dtype_max", {"clip": self.clip})
        offset = self.offset[z] if isinstance(self.offset, tuple) else self.offset
        scale = self.scale[z] if isinstance(self.scale, tuple) else self.scale
        # (x - min) / (max - min) of per_image, computed as zscore computes it: the same float32 values.
        return normalize(raw, "zscore", {"mean": offset, "std": scale, "clip": self.clip})


class NormalizedView:
    """``volume[box]`` normalised, as an array-like for :func:`lib.predict.inference.predict_tiled`.

    With ``z`` given, the 2D slice ``z`` of a volume.
    """

    def __init__(self, volume, normalization, z=None):
        self.volume, self.normalization, self.z = volume, normalization, z
        self.shape = volume.shape if z is None else volume.shape[1:]

    def __getitem__(self, box):
        if self.z is not None:
            return self.normalization.apply(self.volume[(slice(self.z, self.z + 1),) + tuple(box)][0], self.z)
        raw = self.volume[box]
        if isinstance(self.normalization.offset, tuple):  # per-slice statistics of a volume
            start = box[0].indices(self.shape[0])[0]
            return np.stack([self.normalization.apply(s, start + i) for i, s in enumerate(raw)])
        return self.normalization.apply(raw)


def block_ranges(volume, core):
    """``(first z, per-slice minima, per-slice maxima)`` of ``volume[core]`` (one "slice" for a 2D image).

    Extremes are those of the float32 pixels that ``lib.data.intensity.normalize`` sees.
    """
    raw = volume[core]
    if volume.ndim == 2:
        raw = raw[None]
    flat = raw.reshape(len(raw), -1)
    lows, highs = np.float32(flat.min(axis=1)), np.float32(flat.max(axis=1))
    if not (np.isfinite(lows).all() and np.isfinite(highs).all()):
        raise ValueError(f"volume: some pixels of block {core} are NaN or infinite")
    return (core[0].start if volume.ndim == 3 else 0), lows.tolist(), highs.tolist()


def intensity_ranges(volume, blocks, run_tasks):
    """Minimum and maximum of every slice of ``volume`` (lists of Z floats; one each for a 2D image).

    One streaming pass over ``blocks`` (``[(index, core)]``) through ``run_tasks``
    (see :func:`run_tasks`), so memory holds one block.
    """
    depth = volume.shape[0] if volume.ndim == 3 else 1
    lows, highs = [math.inf] * depth, [-math.inf] * depth
    for z0, lo, hi in run_tasks(functools.partial(block_ranges, volume), [core for _, core in blocks],
                                [math.prod(c.stop - c.start for c in core) for _, core in blocks], "scanning"):
        for i, (a, b) in enumerate(zip(lo, hi)):
            lows[z0 + i], highs[z0 + i] = min(lows[z0 + i], a), max(highs[z0 + i], b)
    return lows, highs


def predict_block(predict, image, core, tile, overlap=0.5, window="gaussian", batch_size=8, tta=False,
                  z_filter_size=0, progress=None):
    """Probabilities of the box ``core`` of ``image``, equal to those of tiled prediction of the whole image.

    Parameters
    ----------
    predict : callable from :func:`lib.predict.inference.make_predictor`
    image : array-like ``(*spatial, C)`` of normalised float32 pixels (e.g. :class:`NormalizedView`)
    core : tuple of slices, one per spatial axis
    tile : 2 sizes (a 2D model: a volume is predicted slice by slice) or 3 (a 3D model)
    overlap, window, batch_size, tta : as :func:`lib.predict.inference.predict_tiled`
    z_filter_size : int, odd, or 0 for none
        Median filter along z (:func:`lib.predict.postprocess.z_filter`); the slices it
        needs beyond the core are predicted too.
    progress : callable, optional
        ``progress(total)`` opens a bar over the block's ``total`` network inputs
        (every slice's, for a 2D model), a context manager with ``update(n)``
        such as :func:`lib.predict.inference.tile_progress`; it is updated after each batch.

    Returns
    -------
    float32 ndarray, the shape of ``core`` (with the class axis last for a multi-class model)
    """
    spatial = image.shape[:-1]
    if len(core) != len(spatial) or len(tile) not in (2, 3) or len(tile) > len(spatial):
        raise ValueError(f"core, tile: expected {len(spatial)} slices and 2 or {len(spatial)} tile sizes for an "
                         f"image of spatial shape {spatial}, got {len(core)} and {len(tile)}")
    radius = z_filter_size // 2 if z_filter_size and len(spatial) == 3 else 0
    z0, z1 = (max(core[0].start - radius, 0), min(core[0].stop + radius, spatial[0])) if len(spatial) == 3 else (0, 0)
    if len(tile) == len(spatial):
        box = ((slice(z0, z1),) + tuple(core[1:])) if len(spatial) == 3 else tuple(core)
        total = tiled_inputs(spatial, tile, overlap, tta, box)
    else:
        total = (z1 - z0) * tiled_inputs(spatial[1:], tile, overlap, tta, tuple(core[1:]))
    with progress(total) if progress else contextlib.nullcontext() as bar:
        options = dict(overlap=overlap, window=window, batch_size=batch_size, tta=tta,
                       progress=None if bar is None else bar.update)
        if len(tile) == len(spatial):
            prob = predict_tiled(predict, image, tile, core=box, **options)
        else:
            views = (_SliceOf(image, z) for z in range(z0, z1))
            prob = np.stack([predict_tiled(predict, view, tile, core=tuple(core[1:]), **options) for view in views])
    if radius:
        prob = z_filter(prob, z_filter_size)[core[0].start - z0:core[0].stop - z0]
    return prob


class _SliceOf:
    """Slice ``z`` of a volume array-like, as a 2D array-like."""

    def __init__(self, image, z):
        self.image, self.z, self.shape = image, z, image.shape[1:]

    def __getitem__(self, box):
        if isinstance(self.image, NormalizedView) and self.image.z is None:
            return NormalizedView(self.image.volume, self.image.normalization, self.z)[box]
        return np.asarray(self.image[(slice(self.z, self.z + 1),) + tuple(box)])[0]


# --------------------------------------------------------------------------- jobs

@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to predict and write blocks; picklable (a Dask task argument).

    ``volume`` is a :class:`lib.data.volumes.Volume`; ``store`` the output zarr store
    made by :func:`lib.predict.writers.create_store`; ``block`` the spatial block shape.
    """

    volume: object
    normalization: Normalization
    model_path: str
    tile: tuple
    block: tuple
    store: str
    overlap: object = 0.5
    window: str = "gaussian"
    batch_size: int = 8
    tta: bool = False
    z_filter_size: int = 0
    threshold: float = 0.5
    prob_dtype: str = "uint8"
    classes: int = 1  # a multi-class model's K: probabilities (K, *spatial) and a label image of class ids
    targets: str = "mask"  # bc / bcd: K instance channels (K, *spatial), the mask their foreground (channel 0)
    precision: object = None  # train.precision to predict in (lib.model.mixed_precision.set_precision); None: as saved


_MODELS = {}  # model path -> (the file's (mtime, size) and the precision, (model, predictor))


_MODELS_LOCK = threading.Lock()


def load_predictor(model_path, precision=None):
    """``(keras model, predictor)`` of a ``.keras`` file, loaded once per process (each Dask worker loads it once).

    ``precision`` (``train.precision``) makes it compute in that precision; None keeps the
    precision it was saved with. A file changed since it was loaded (a run trained again
    in the same session) is loaded again.
    """
    stat = os.stat(model_path)
    version = (stat.st_mtime_ns, stat.st_size, precision)
    with _MODELS_LOCK:
        if _MODELS.get(model_path, (None,))[0] != version:
            from ..model.mixed_precision import set_precision
            from ..model.saving import load_model

            model = load_model(model_path)
            if precision is not None:
                set_precision(model, precision)
            _MODELS[model_path] = (version, (model, make_predictor(model)))
        return _MODELS[model_path][1]


def process_block(job, block, tile_bar=False):
    """Predict block ``(index, core)`` of ``job``, write its core to the store, then flag it done.

    With ``tile_bar``, a block of many tiles shows a bar of its tiles (:func:`lib.predict.inference.tile_progress`).
    Returns the number of voxels written.
    """
    import zarr

    index, core = block
    _, predict = load_predictor(job.model_path, job.precision)
    view = NormalizedView(job.volume, job.normalization)
    progress = functools.partial(tile_progress, desc=f"block {','.join(map(str, index))}") if tile_bar else None
    prob = predict_block(predict, view, core, job.tile, job.overlap, job.window, job.batch_size, job.tta,
                         job.z_filter_size, progress)
    root = zarr.open_group(job.store, mode="r+")
    stored = np.rint(prob * 255).astype(np.uint8) if job.prob_dtype == "uint8" else prob.astype(np.float16)
    if job.classes == 1:
        writers.prob_array(root)[core] = stored
        writers.mask_array(root)[core] = binarize(prob, job.threshold)
    else:
        writers.prob_array(root)[(slice(None),) + tuple(core)] = np.moveaxis(stored, -1, 0)
        writers.mask_array(root)[core] = most_probable(prob) if job.targets == "mask" else binarize(prob[..., 0],
                                                                                                      job.threshold)
    root["blocks_done"][index] = 1  # after the data: a block is flagged only when completely written
    return int(np.prod(prob.shape[:len(core)]))


def pending_blocks(job):
    """The blocks of ``job`` not yet flagged in ``blocks_done``: ``(all blocks, pending blocks)``."""
    import zarr

    _, blocks = block_grid(job.volume.shape[:-1], job.block)
    done = np.asarray(zarr.open_group(job.store, mode="r")["blocks_done"][...])
    return blocks, [b for b in blocks if not done[b[0]]]


def run_tasks_in_process(fn, items, sizes, desc, initial=0, total=None):
    """Call ``fn`` on each item in turn, with a progress bar of voxels (ETA, voxels/s); yield the results."""
    with _progress(desc, sizes, initial, total) as bar:
        for item, size in zip(items, sizes):
            result = fn(item)
            bar.update(size)
            yield result


def run_tasks_on(client):
    """A ``run_tasks`` that maps ``fn`` over the items on the Dask ``client``; failed tasks are retried."""
    def run_tasks(fn, items, sizes, desc, initial=0, total=None):
        from distributed import as_completed

        futures = client.map(fn, items, pure=False, retries=RETRIES)
        size_of = {f.key: s for f, s in zip(futures, sizes)}
        with _progress(desc, sizes, initial, total) as bar:
            for future in as_completed(futures):
                result = future.result()
                bar.update(size_of[future.key])
                yield result

    return run_tasks


def _progress(desc, sizes, initial, total):
    total = sum(sizes) + initial if total is None else total
    return progress_bar(total=total, initial=initial, desc=desc, unit="vox", unit_scale=True, smoothing=0.1)


def run_job(job, run_tasks=run_tasks_in_process):
    """Predict every block of ``job`` not yet done; returns ``(blocks, blocks skipped, seconds)``.

    In process, a block of many tiles also shows a bar of its tiles below the bar of voxels (on Dask, workers
    show none: their output is not this terminal).
    """
    blocks, pending = pending_blocks(job)
    start = time.perf_counter()
    voxels = [math.prod(c.stop - c.start for c in core) for _, core in pending]
    total = math.prod(job.volume.shape[:-1])
    tile_bar = run_tasks is run_tasks_in_process
    for _ in run_tasks(functools.partial(process_block, job, tile_bar=tile_bar), pending, voxels,
                       f"predicting {len(pending)} of {len(blocks)} blocks", initial=total - sum(voxels), total=total):
        pass
    return len(blocks), len(blocks) - len(pending), time.perf_counter() - start


def connect(scheduler, threads=0):
    """A Dask client for ``scheduler``: ``local:N`` (a new LocalCluster of N worker processes) or an address.

    Returns ``(client, cluster or None)``. LocalCluster workers have one thread
    each (one block at a time) and inherit this process's environment (device,
    thread limits); with ``threads`` 0 each worker's Keras gets ``cores / N`` threads.

    Raises
    ------
    ValueError
        When ``scheduler`` is malformed; OSError or TimeoutError when it cannot be reached.
    """
    import os

    from distributed import Client, LocalCluster

    if scheduler.startswith("local:"):
        n = scheduler.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"scheduler: expected local:N with N a positive number of workers, got {scheduler!r}")
        per_worker = str(threads or max(1, (os.cpu_count() or 1) // int(n)))
        for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ[var] = per_worker
        cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, dashboard_address=None,
                               memory_limit=0, silence_logs=40)
        return Client(cluster), cluster
    if "://" not in scheduler:
        raise ValueError(f"scheduler: expected local:N or an address such as tcp://HOST:8786, got {scheduler!r}")
    import dask

    return Client(scheduler, timeout=dask.config.get("distributed.comm.timeouts.connect")), None

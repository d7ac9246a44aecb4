"""Images and volumes of any size, read lazily: TIFF, folders of slices, zarr, OME-Zarr, HDF5.

:func:`open_volume` makes a :class:`Volume`: shape ``(*spatial, C)`` channels-last, read box by
box, picklable (Dask workers reopen the file). A 2D image or multi-page TIFF, a folder of 2D
slices (sorted, one volume, as the 3D template reads them), a zarr array (``vol.zarr`` or
``vol.zarr/raw``, zarr v2 or v3; an OME-Zarr image gives its level 0) or an HDF5 dataset
(``vol.h5:raw``). :class:`StoreRegion` is the same for the training volumes of the 3D template.
"""

import os

import numpy as np
import tifffile

from ..errors import UserError
from . import io

ZARR_SUFFIX = ".zarr"


HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


class Volume:
    """A 2D image ``(Y, X, C)`` or a volume ``(Z, Y, X, C)`` read on demand.

    Attributes
    ----------
    spec : str, the INPUT as given
    shape : tuple of int, ``(*spatial, C)``
    dtype : numpy.dtype, pixel type of what ``volume[box]`` returns
    voxel_size : tuple of float per spatial axis, or None when the file records none
    unit : str or None, the unit of ``voxel_size`` (e.g. ``micrometer``)
    """

    def __init__(self, spec, kind, shape, dtype, roles=None, key=None, slices=None, voxel_size=None, unit=None):
        self.spec, self.kind, self.key = spec, kind, key
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.roles, self.slices = roles, slices
        self.voxel_size, self.unit = voxel_size, unit
        self._handle = None

    @property
    def ndim(self):
        """Number of spatial axes, 2 or 3."""
        return len(self.shape) - 1

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}  # file handles do not travel; workers reopen the file

    def __getitem__(self, box):
        """Pixels of ``box`` (a tuple of slices, one per spatial axis) as ``(*sub, C)`` of ``self.dtype``."""
        box = tuple(slice(*b.indices(s)[:2]) for b, s in zip(box, self.shape))
        if self.slices is not None:
            window = tuple((b.start, b.stop) for b in box[-2:])
            if self.ndim == 2:
                return self.slices[0].read(window)
            return np.stack([self.slices[z].read(window) for z in range(box[0].start, box[0].stop)])
        spatial = iter(box)
        index = tuple(0 if r == "t" else slice(None) if r == "c" else next(spatial) for r in self.roles)
        array = np.asarray(self._array()[index])
        kept = [r for r in self.roles if r != "t"]
        if "c" in kept:
            array = np.moveaxis(array, kept.index("c"), -1)
        else:
            array = array[..., None]
        return array.astype(self.dtype, copy=False)

    def _array(self):
        if self._handle is None:
            if self.kind == "hdf5":
                import h5py

                path, key = self.key
                self._handle = h5py.File(path, "r")[key]
            else:
                import zarr

                self._handle = zarr.open_array(self.key, mode="r")
        return self._handle


def open_volume(spec, channels=1):
    """Open INPUT ``spec`` as a lazily read :class:`Volume`; nothing but headers is read.

    Parameters
    ----------
    spec : str
        A TIFF or other image file, a folder of slices, ``path.zarr[/inner/path]``
        or ``path.h5:dataset``. An OME-Zarr image (0.4 or 0.5) is read at its level 0;
        ``vol.zarr/2`` reads its level 2, with that level's voxel size.
    channels : int
        The model's input channels: a zarr/HDF5 array ``(A, B, C)`` whose last
        size equals ``channels > 1`` is read as a 2D image with channels, else as
        a single-channel volume ``(Z, Y, X)``; ``(Z, Y, X, C)`` arrays are volumes.

    Raises
    ------
    UserError
        Naming INPUT when it is missing, unreadable, or not an image or volume.
    """
    hdf5 = _hdf5_parts(spec)
    if hdf5 is not None:
        return _open_hdf5(spec, *hdf5, channels)
    if ZARR_SUFFIX in spec:
        return _open_zarr(spec, channels)
    if not os.path.exists(spec):
        raise UserError(f"INPUT {spec}: not found; expected an image or TIFF stack, a folder of slices, "
                        "a zarr array (vol.zarr or vol.zarr/raw) or an HDF5 dataset (vol.h5:raw)")
    if os.path.isdir(spec):
        paths = io.list_images(spec)
        slices = []
        for path in paths:
            found = io.file_slices(path)
            if len(found) != 1:
                raise UserError(f"INPUT {spec}: {path} holds {len(found)} slices; a folder of slices needs one 2D "
                                "image per file (give a multi-page TIFF as INPUT itself)")
            slices += found
        io.check_same_kind(slices)
        for s, path in zip(slices, paths):
            if s.shape != slices[0].shape:
                raise UserError(f"INPUT {spec}: {path} is {'x'.join(map(str, s.shape[:2]))}, but {paths[0]} "
                                f"{'x'.join(map(str, slices[0].shape[:2]))}; the slices of a volume must have one size")
        return Volume(spec, "slices", (len(slices),) + slices[0].shape, slices[0].dtype, slices=slices)
    slices = io.file_slices(spec)
    io.check_same_kind(slices)
    shape = slices[0].shape if len(slices) == 1 else (len(slices),) + slices[0].shape
    size, unit = _tiff_voxel_size(spec, len(shape) - 1)
    return Volume(spec, "slices", shape, slices[0].dtype, slices=slices, voxel_size=size, unit=unit)


def input_path(spec):
    """The file or folder that INPUT ``spec`` reads (``vol.zarr`` of ``vol.zarr/raw``, ``vol.h5`` of ``vol.h5:raw``);
    None for a URL."""
    if "://" in spec:
        return None
    hdf5 = _hdf5_parts(spec)
    if hdf5 is not None:
        return hdf5[0]
    if ZARR_SUFFIX in spec:
        return spec[:spec.index(ZARR_SUFFIX) + len(ZARR_SUFFIX)]
    return spec


def _hdf5_parts(spec):
    """``(file, key)`` when ``spec`` names an HDF5 file (``vol.h5`` or ``vol.h5:key``), else None."""
    path, _, key = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if path.lower().endswith(HDF5_SUFFIXES):
        return path, key
    if spec.lower().endswith(HDF5_SUFFIXES):
        return spec, ""
    return None


def _open_hdf5(spec, path, key, channels):
    import h5py

    if not os.path.isfile(path):
        raise UserError(f"INPUT {spec}: HDF5 file {path} not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"INPUT {spec}: cannot read {path} as HDF5 ({exc})") from None
    with handle:
        datasets = []
        handle.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        listing = ", ".join(f"{path}:{d}" for d in datasets) or "none"
        if not key or key not in handle or not isinstance(handle[key], h5py.Dataset):
            what = "no dataset key given" if not key else f"no dataset '{key}'"
            raise UserError(f"INPUT {spec}: {what}; name one as FILE.h5:KEY, e.g. {listing.split(', ')[0]} "
                            f"(datasets: {listing})")
        data = handle[key]
        roles = _roles(spec, data.shape, channels)
        size = data.attrs.get("element_size_um")
        size = tuple(float(v) for v in size) if size is not None and len(size) == roles.count("s") else None
        dtype = io.pixel_type(data.dtype, spec)
    return _volume(spec, "hdf5", (path, key), (int(s) for s in data.shape), roles, dtype, size, "micrometer" if size else None)


def _open_zarr(spec, channels):
    import zarr

    root = spec[:spec.index(ZARR_SUFFIX) + len(ZARR_SUFFIX)]
    if not os.path.exists(spec):
        raise UserError(f"INPUT {spec}: not found" + ("" if os.path.exists(root) else f" ({root} does not exist)"))
    try:
        node = zarr.open(spec, mode="r")
    except Exception as exc:  # zarr raises several types for folders that are no zarr node
        raise UserError(f"INPUT {spec}: cannot open it as a zarr array or group ({type(exc).__name__}: {exc})") from None
    if isinstance(node, zarr.Group):
        level = _ome_dataset(dict(node.attrs))
        if level is None:
            arrays = [f"{spec.rstrip('/')}/{name}" for name, _ in node.arrays()]
            raise UserError(f"INPUT {spec}: a zarr group without OME-Zarr multiscales; give one of its arrays "
                            f"({', '.join(arrays) or 'it has none'})")
        path = os.path.join(spec, level[0])
        node = zarr.open_array(path, mode="r")
        ome = level[1:]
    else:
        path = spec
        ome = _ome_level(spec)  # a level of an OME-Zarr image, e.g. vol.zarr/2: the axes and scale of that level
    size = unit = None
    if ome and ome[0]:
        axes, transforms = ome
        axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
        roles = [_ome_role(a) for a in axes]
        if len(roles) != node.ndim:
            raise UserError(f"INPUT {spec}: the OME-Zarr axes {[a.get('name') for a in axes]} do not match "
                            f"the array's {node.ndim} dimensions")
        for r, n in zip(roles, node.shape):
            if r == "t" and n != 1:
                raise UserError(f"INPUT {spec}: a time series of {n} time points; expected one (a single image "
                                "or volume)")
        scale = next((t["scale"] for t in transforms if t.get("type") == "scale"), None)
        if scale is not None:
            size = tuple(float(v) for v, r in zip(scale, roles) if r == "s")
            unit = next((a.get("unit") for a, r in zip(axes, roles) if r == "s" and a.get("unit")), None)
        if roles.count("s") not in (2, 3) or roles.count("c") > 1:
            raise UserError(f"INPUT {spec}: OME-Zarr axes {[a.get('name') for a in axes]}; expected 2 or 3 "
                            "space axes and at most one channel axis")
    else:
        roles = _roles(spec, node.shape, channels)
    return _volume(spec, "zarr", path, node.shape, roles, io.pixel_type(node.dtype, spec), size, unit)


def _ome_level(spec):
    """``(axes, coordinateTransformations)`` of the array at ``spec`` when it is a level of an OME-Zarr image
    (``vol.zarr/2``: the dataset ``2`` of the multiscales of ``vol.zarr``), else None."""
    import zarr

    parent, name = os.path.split(spec.rstrip("/"))
    try:
        attrs = dict(zarr.open_group(parent, mode="r").attrs)
    except Exception:  # no group above: a plain array
        return None
    level = _ome_dataset(attrs, name)
    return None if level is None else level[1:]


def _ome_dataset(attrs, path=None):
    """``(path, axes, coordinateTransformations)`` of the dataset ``path`` (default: the first, level 0) of the
    OME-Zarr multiscales in a group's ``attrs``, or None when there is none."""
    ome = attrs.get("ome", attrs)  # OME-Zarr 0.5 keeps its metadata under "ome", 0.4 at the top
    multiscale = (ome.get("multiscales") or [None])[0]
    if multiscale is None:
        return None
    for dataset in multiscale.get("datasets", []):
        if path is None or dataset.get("path") == path:
            return dataset["path"], multiscale.get("axes"), dataset.get("coordinateTransformations", [])
    return None


def _volume(spec, kind, key, raw_shape, roles, dtype, size, unit):
    raw_shape = tuple(raw_shape)
    spatial = tuple(n for n, r in zip(raw_shape, roles) if r == "s")
    c = next((n for n, r in zip(raw_shape, roles) if r == "c"), 1)
    if 0 in spatial or c == 0:
        raise UserError(f"INPUT {spec}: an empty array of shape {raw_shape}")
    return Volume(spec, kind, spatial + (c,), dtype, roles=roles, key=key, voxel_size=size, unit=unit)


def _ome_role(axis):
    kind = axis.get("type") or {"c": "channel", "t": "time"}.get(axis.get("name"), "space")
    return {"space": "s", "channel": "c", "time": "t"}.get(kind, "s")


def _roles(spec, shape, channels):
    """Axis roles of a plain array: ``s`` spatial, ``c`` channels (last)."""
    if len(shape) == 2:
        return ["s", "s"]
    if len(shape) == 3:
        return ["s", "s", "c"] if channels > 1 and shape[-1] == channels else ["s", "s", "s"]
    if len(shape) == 4:
        return ["s", "s", "s", "c"]
    raise UserError(f"INPUT {spec}: an array of shape {tuple(shape)}; expected (Y, X), (Y, X, C), (Z, Y, X) "
                    "or (Z, Y, X, C)")


def _tiff_voxel_size(path, ndim):
    """Pixel size (and slice spacing) of an ImageJ TIFF, or ``(None, None)``."""
    if not path.lower().endswith(io.TIFF_EXTENSIONS):
        return None, None
    with io.decoding_errors(path), tifffile.TiffFile(path) as tif:
        meta = tif.imagej_metadata or {}
        tag = tif.pages[0].tags.get("XResolution")
        if not meta or tag is None or not tag.value[0]:
            return None, None
        xy = tag.value[1] / tag.value[0]
        unit = {"micron": "micrometer", "\\u00B5m": "micrometer", "µm": "micrometer", "nm": "nanometer"}.get(
            meta.get("unit"), meta.get("unit"))
        return ((float(meta.get("spacing", 1.0)),) if ndim == 3 else ()) + (xy, xy), unit


# --------------------------------------------------------------------------- training data in stores

class StoreRegion:
    """A box of a store's :class:`Volume`, read window by window: a 2D slice, a volume or a z range of it.

    The source of :class:`lib.data.disk.DiskImage` and :class:`lib.data.disk.DiskMask` for data
    in zarr / HDF5 stores, as :class:`lib.data.io.FileSlice` is for image files: a read
    asks the store for its window only, which reads the chunks it touches.

    Parameters
    ----------
    volume : Volume
    start, stop : tuple of int, the box in the volume's spatial axes
    squeeze : bool
        The box is one z slice of a volume, read as a 2D image (the z axis dropped).
    index : int, the z of a slice (its number in the store), 0 otherwise
    """

    def __init__(self, volume, start, stop, squeeze=False, index=0):
        self.volume, self.start, self.stop = volume, tuple(start), tuple(stop)
        self.squeeze, self.index = squeeze, index

    @property
    def path(self):
        return self.volume.spec

    @property
    def dtype(self):
        return self.volume.dtype

    @property
    def shape(self):
        """``(*spatial, C)``, without the z axis of a slice."""
        spatial = tuple(b - a for a, b in zip(self.start, self.stop))[1 if self.squeeze else 0:]
        return spatial + (self.volume.shape[-1],)

    def part(self, start, stop):
        """The z range ``[start, stop)`` of this box (a volume's, counted from the box's first slice)."""
        if self.squeeze or len(self.start) != 3:
            raise ValueError("StoreRegion.part: only a volume has z ranges")
        z0 = self.start[0]
        return StoreRegion(self.volume, (z0 + start,) + self.start[1:], (z0 + stop,) + self.stop[1:])

    def read(self, window=None):
        """Pixels ``(*window, C)`` of ``window`` (``((y0, y1), (x0, x1))``, one pair more in 3D; None: all)."""
        if window is None:
            window = tuple((0, n) for n in self.shape[:-1])
        if self.squeeze:
            window = ((0, 1),) + tuple(window)
        box = tuple(slice(s + a, s + b) for s, (a, b) in zip(self.start, window))
        array = self.volume[box]
        return array[0] if self.squeeze else array


def open_store(path):
    """Open a zarr or HDF5 store of a dataset folder as a :class:`Volume` (one channel unless 4D).

    A zarr path is an array or an OME-Zarr image (level 0); an HDF5 file must hold
    exactly one dataset, as nothing in a folder listing can name one.
    """
    hdf5 = _hdf5_parts(path)
    if hdf5 is not None and not hdf5[1]:
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                datasets = []
                handle.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        except OSError as exc:
            raise UserError(f"{path}: cannot read it as HDF5 ({exc})") from None
        if len(datasets) != 1:
            raise UserError(f"{path}: holds {len(datasets)} datasets ({', '.join(datasets) or 'none'}); a dataset "
                            "folder's HDF5 file must hold exactly one (the image, or the mask)")
        path = f"{path}:{datasets[0]}"
    return open_volume(path)


def store_slices(path):
    """The 2D slices of a store, as :class:`StoreRegion` s: one per z of a volume, or the 2D image itself.

    Store masks are read as they are stored.
    """
    volume = open_store(path)
    if volume.ndim == 2:
        return [StoreRegion(volume, (0, 0), volume.shape[:2])]
    depth, height, width = volume.shape[:3]
    return [StoreRegion(volume, (z, 0, 0), (z + 1, height, width), squeeze=True, index=z) for z in range(depth)]


def store_volume(path):
    """A store's whole volume as one :class:`StoreRegion` ``(Z, Y, X, C)``; UserError for a 2D store."""
    volume = open_store(path)
    if volume.ndim != 3:
        raise UserError(f"{path}: a 2D array of shape {volume.shape[:2]}; the 3D template needs volumes (Z, Y, X)")
    return StoreRegion(volume, (0, 0, 0), volume.shape[:3])

"""Image files: listing, reading (whole, or page and window at a time) and atomic writing.

A file may hold one 2D image or a multi-page TIFF stack. Masks are binary: any two values of
which one is 0 (0/1 and 0/255 are both common) or a single value; with ``classes`` K > 2
(multi-class segmentation) they hold class ids 0..K-1 (8- or 16-bit, or a palette PNG); with
K = 2 either (a binary mask is class 1 on class 0).

Files are written under a temporary name, then renamed (:func:`write_atomic`), so that a killed
process leaves whole files or none.
"""

import contextlib
import csv
import io as _io
import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np
import tifffile

from ..errors import UserError

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


TIFF_EXTENSIONS = (".tif", ".tiff")


# Chunked stores, read window by window (lib.data.volumes): a zarr array or OME-Zarr image, an HDF5 file of one dataset.
STORE_EXTENSIONS = (".zarr", ".h5", ".hdf5", ".hdf")


def is_store(path):
    """True when ``path`` names a zarr or HDF5 store (by its suffix), which is read window by window."""
    return path.rstrip("/").lower().endswith(STORE_EXTENSIONS)


def list_images(folder):
    """Return the image files (and zarr / HDF5 stores) of ``folder``, sorted by :func:`natural_key`
    (``img2`` before ``img10``).

    Raises
    ------
    UserError
        If the folder is missing or holds no image file.
    """
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: folder not found")
    files = sorted((os.path.join(folder, f) for f in os.listdir(folder)
                    if f.lower().endswith(IMAGE_EXTENSIONS + STORE_EXTENSIONS) and not f.startswith(".")),
                   key=natural_key)
    if not files:
        raise UserError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS + STORE_EXTENSIONS)}) found")
    return files


def natural_key(path):
    """Sort key of a file name with its runs of digits compared by value: ``img2`` < ``img10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", os.path.basename(path))]


def read_image(path, mask=False):
    """Read one image file as a NumPy array (2D, 2D with channels last, or a stack).

    Channel axes are recognised: a planar colour TIFF ``(3, H, W)`` (its sample
    axis, from the TIFF tags) becomes ``(H, W, 3)``; the alpha channel of a grey
    + alpha image (2 channels) is dropped. With ``mask``, a palette image
    (PNG, GIF, BMP) is read as its palette indices, not its colours.

    Raises
    ------
    UserError
        If the file is empty or cannot be decoded, or is a zarr / HDF5 store (never read whole).
    """
    if is_store(path):
        raise UserError(f"{path}: a zarr / HDF5 volume, which is read window by window, never whole: train on "
                        "it with templates/big_data_template.py (2D) or templates/3D_template.py (every volume of "
                        "DATA_DIR/train/x a store)")
    with decoding_errors(path):
        if path.lower().endswith(TIFF_EXTENSIONS):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                array, axes = series.asarray(), series.axes
            if "S" in axes[:-1]:  # planar colour: samples last, as in every other layout
                array = np.moveaxis(array, axes.index("S"), -1)
        else:
            array = _palette_indices(path) if mask else None
            if array is None:
                import skimage.io

                array = skimage.io.imread(path)
            if array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha: the alpha is no pixel value
                array = array[..., 0]
    array = array.astype(pixel_type(array.dtype, path), copy=False)
    if array.size == 0:
        raise UserError(f"{path}: cannot read image (no pixels in it; is the file corrupt or truncated?)")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError(f"{path}: {np.count_nonzero(~np.isfinite(array))} pixels are NaN or infinite; expected "
                        "finite values (replace them, e.g. by the background level)")
    return array


def _palette_indices(path):
    """The palette indices ``(H, W)`` of a palette image, or None for other images."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image) if image.mode == "P" else None


@contextlib.contextmanager
def decoding_errors(path):
    """Turn the exceptions of image decoders into a UserError naming ``path``."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise UserError(f"{path}: cannot read image: the file is empty (0 bytes)")
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as exc:  # decoders raise many types for corrupt files
        raise UserError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


def pixel_type(dtype, path):
    """The in-memory pixel type for a file's ``dtype``: uint8 for bool; UserError unless integer or float."""
    if dtype == bool:
        return np.dtype(np.uint8)
    if dtype is None or dtype.kind not in "uif":
        raise UserError(f"{path}: unsupported pixel type {dtype}; expected integer or float pixels")
    return dtype


def as_image_slices(array, path):
    """Split an image array into 2D images of shape ``(H, W, C)``.

    ``(H, W)`` and ``(H, W, C)`` with C in 1..4 are one image; ``(Z, H, W)``
    is a stack of Z single-channel images.
    """
    if array.ndim == 2:
        return [array[..., None]]
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] > 4:
        return [array]
    if array.ndim == 3:
        return [s[..., None] for s in array]
    if array.ndim == 4:
        return list(array)
    raise UserError(f"{path}: expected a 2D image or a stack of 2D images, got shape {array.shape}")


def as_mask_slices(array, path, classes=1, ignore=None):
    """Split a mask array into 2D masks ``(H, W)`` uint8: {0, 1}, or class ids (see :func:`class_mask`).

    RGB(A) masks are accepted when their colour channels are identical.
    """
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
        array = mask_channel(array, path)
    slices = [array] if array.ndim == 2 else list(array) if array.ndim == 3 else None
    if slices is None:
        raise UserError(f"{path}: expected a 2D mask or a stack of 2D masks, got shape {array.shape}")
    return [class_mask(s, path, classes, ignore) for s in slices]


def mask_channel(array, path):
    """The single channel ``(H, W)`` of a mask ``(H, W, C)`` whose colour channels are identical.

    An alpha channel (the 4th) is ignored. Raises UserError naming ``path`` when
    the colour channels differ.
    """
    if not all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, min(array.shape[-1], 3))):
        raise UserError(f"{path}: colour mask with differing channels; expected a single-channel binary mask")
    return array[..., 0]


def _shown(values):
    return ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")


# ``classes`` of the functions that read masks for instance runs (``model.targets`` bc or bcd): label images.
LABELS = 0


# --------------------------------------------------------------------------- unannotated pixels (data.ignore_value)

def ignore_id(dtype):
    """The value of the unannotated pixels of a mask of ``dtype`` as the readers return it: the type's largest
    (255 of uint8 masks, 65535 or 4294967295 of label images), which no class id or object id takes."""
    return np.iinfo(dtype).max


def ignored(mask):
    """Boolean array: the unannotated pixels of a mask as the readers return it (none in a float or bool array)."""
    mask = np.asarray(mask)
    if not np.issubdtype(mask.dtype, np.integer):
        return np.zeros(mask.shape, bool)
    return mask == ignore_id(mask.dtype)


def annotated(mask):
    """Boolean array: the annotated pixels of a mask (every pixel but the :func:`ignored` ones)."""
    return ~ignored(mask)


def foreground(mask):
    """Boolean array: the annotated pixels of a mask that are not background (any class or object but 0)."""
    mask = np.asarray(mask)
    return (mask > 0) & ~ignored(mask)


def check_annotated(mask, where):
    """Raise UserError naming ``where`` (the mask's file) when every pixel of ``mask`` is unannotated."""
    if np.asarray(mask).size and ignored(mask).all():
        raise unannotated(where)


def unannotated(where):
    """The UserError of a mask (file ``where``) whose every pixel is unannotated."""
    return UserError(f"{where}: every pixel of the mask is the ignore value (data.ignore_value: unannotated); "
                     "expected some annotated pixels, or leave this image out")


def as_mask_type(mask, dtype):
    """``mask`` as ``dtype`` with its unannotated pixels still :func:`ignored` (e.g. 65535 of uint16 -> 4294967295
    of uint32 when the slices of a volume are stacked)."""
    mask = np.asarray(mask)
    if mask.dtype == dtype:
        return mask
    hidden = ignored(mask)
    out = mask.astype(dtype)
    if hidden.any():
        out[hidden] = ignore_id(dtype)
    return out


def label_mask(mask, path):
    """Return a label image (0 background, each object its own id) as uint16, or uint32 when an id needs it.

    A binary mask (e.g. 0/255) is a label image too: its objects are its connected components. Raises
    UserError naming ``path`` for a float mask with fractions, negative ids or ids beyond uint32.
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.uint16)
    if not np.issubdtype(mask.dtype, np.number):
        raise UserError(f"{path}: mask of type {mask.dtype}; expected a label image of integer ids (8, 16 or 32 "
                        "bit), 0 the background")
    if not np.issubdtype(mask.dtype, np.integer) and mask.size and not np.array_equal(mask, np.round(mask)):
        fractions = np.unique(mask[mask != np.round(mask)])
        raise UserError(f"{path}: float mask with fractional values (e.g. {_shown(fractions)}); expected a label "
                        "image of integer ids (8, 16 or 32 bit), 0 the background")
    low, high = (mask.min(), mask.max()) if mask.size else (0, 0)
    largest = ignore_id(np.uint32) - 1  # the type's largest marks unannotated pixels (data.ignore_value)
    if low < 0 or high > largest:
        raise UserError(f"{path}: label ids from {low} to {high}; expected ids 0 (background) to {largest}")
    return mask.astype(np.uint16 if high < ignore_id(np.uint16) else np.uint32)


def class_mask(mask, path, classes=1, ignore=None):
    """Return ``mask`` as uint8: {0, 1} for ``classes`` 1 (binary), class ids ``0 .. classes - 1`` for more;
    with ``classes`` :data:`LABELS`, a label image (:func:`label_mask`).

    With ``classes`` <= 2 a binary mask (at most two distinct values, one of which is 0 when
    there are two, e.g. 0/255) is accepted and becomes {0, 1}; with 2 a mask of class ids {0, 1}
    is such a mask. With ``classes`` > 2 every value must be an integer class id below ``classes``.
    Pixels of the value ``ignore`` (``data.ignore_value``) are unannotated: they become the type's largest value
    (:func:`ignored`), the other values are checked as above.
    Raises UserError naming ``path`` and the values found otherwise.
    """
    if ignore is not None:
        mask = np.asarray(mask)
        hidden = mask == ignore
        if hidden.any():
            out = class_mask(np.where(hidden, 0, mask).astype(mask.dtype), path, classes)
            out[hidden] = ignore_id(out.dtype)
            return out
    if classes == LABELS:
        return label_mask(mask, path)
    values = np.unique(mask)
    if classes <= 2:
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            expected = ("expected background 0 and one foreground value (e.g. 0/1 or 0/255)" if classes == 1 else
                        "expected class ids 0 and 1, or background 0 and one foreground value (classes=2)")
            raise UserError(f"{path}: mask is not binary, found {len(values)} values ({_shown(values)}); {expected}"
                            f"{'; a label image of objects needs model.targets=bc or bcd' if classes == 1 else ''}")
        return (mask > 0).astype(np.uint8)
    outside = values[(values < 0) | (values > classes - 1) | (values != np.round(values))]
    if len(outside):
        raise UserError(f"{path}: mask values {_shown(outside)} are not class ids 0-{classes - 1} "
                        f"(classes={classes}); found {len(values)} values ({_shown(values)}); expected one "
                        "class id per pixel, 0 the background")
    return mask.astype(np.uint8)


# --------------------------------------------------------------------------- 2D slices read on demand

JPEG_COMPRESSIONS = (6, 7, 33007, 34892)


@dataclass(frozen=True)
class FileSlice:
    """One 2D slice of an image file, described from the file's header and read on demand.

    Attributes
    ----------
    path : str
    index : int
        Slice number in the file (0 for a file holding one image).
    shape : tuple of int
        ``(H, W, C)``.
    dtype : numpy.dtype
        Pixel type, as ``read_image`` returns it.
    by_page : bool
        The slice is TIFF page ``index``: a window is read by decoding only the
        strips or tiles it touches. Otherwise every read decodes the whole file.
    mask : bool
        A mask slice: palette images are read as their indices (see ``read_image``).
    """

    path: str
    index: int
    shape: tuple
    dtype: np.dtype
    by_page: bool
    mask: bool = False

    def read(self, window=None):
        """Return the pixels of the slice, or of ``window``, as ``(h, w, C)`` of ``self.dtype``.

        Parameters
        ----------
        window : ``((y0, y1), (x0, x1))`` inside the slice, or None for the whole slice
        """
        if self.by_page:
            with decoding_errors(self.path), tifffile.TiffFile(self.path) as tif:
                array = _read_page(tif, tif.pages[self.index], window)
        else:
            array = as_image_slices(read_image(self.path, self.mask), self.path)[self.index]
            if window is not None:
                (y0, y1), (x0, x1) = window
                array = array[y0:y1, x0:x1]
        return array.astype(self.dtype, copy=False)


def check_same_kind(images):
    """Raise UserError unless all ``images`` ``(..., C)`` share their channel count and pixel type."""
    channels = {x.shape[-1] for x in images}
    if len(channels) > 1:
        raise UserError(f"images have different channel counts {sorted(channels)}; expected all the same")
    dtypes = {x.dtype for x in images}
    if len(dtypes) > 1:
        raise UserError(f"images have different pixel types {sorted(map(str, dtypes))}; expected one type")


def file_slices(path, mask=False):
    """Describe the 2D slices of an image file (a mask with ``mask``), from TIFF headers where possible.

    A TIFF whose every page is one 2D image ``(H, W)`` or ``(H, W, C)`` gives one
    slice per page, described without decoding pixels. Other files (PNG, JPEG, ...,
    TIFF stacks stored in a single page) are decoded once here and split as
    ``as_image_slices`` splits them.

    Returns
    -------
    list of FileSlice

    Image files only: the slices of a zarr or HDF5 store are :func:`lib.data.volumes.store_slices`.

    Raises
    ------
    UserError
        If the file is missing, cannot be decoded or has an unsupported pixel type.
    """
    if path.lower().endswith(TIFF_EXTENSIONS):
        with decoding_errors(path), tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            if all(_is_2d_page(p) for p in pages):
                return [FileSlice(path, i, _page_shape(p), pixel_type(p.dtype, path), True)
                        for i, p in enumerate(pages)]
    slices = as_image_slices(read_image(path, mask), path)
    return [FileSlice(path, i, s.shape, s.dtype, False, mask) for i, s in enumerate(slices)]


def read_mask(source, window=None, classes=1, ignore=None):
    """Read a mask ``FileSlice`` or store region (or its ``window``) as ``(h, w)`` (``(d, h, w)`` for a
    volume) uint8 {0, 1}, or class ids with ``classes`` > 1 (:func:`class_mask`).

    Raises UserError naming the file if the pixels read are not binary (not class ids).
    """
    array = source.read(window)
    return class_mask(mask_channel(array, source.path) if array.shape[-1] > 1 else array[..., 0], source.path,
                      classes, ignore)


def _is_2d_page(page):
    return page.imagedepth == 1 and (len(page.shape) == 2 or (len(page.shape) == 3 and page.planarconfig == 1))


def _page_shape(page):
    return tuple(page.shape) if len(page.shape) == 3 else tuple(page.shape) + (1,)


def _read_page(tif, page, window):
    """Pixels ``(h, w, C)`` of a 2D TIFF page, decoding only the strips or tiles ``window`` touches."""
    height, width, channels = _page_shape(page)
    if window is None or page.bitspersample not in (8, 16, 32, 64):
        array = page.asarray().reshape(height, width, channels)
        return array if window is None else array[window[0][0]:window[0][1], window[1][0]:window[1][1]]
    (y0, y1), (x0, x1) = window
    fh = tif.filehandle
    if page.is_final:  # uncompressed and contiguous: read the window's rows directly
        dtype = page.dtype.newbyteorder(tif.byteorder)
        row = width * channels * dtype.itemsize
        fh.seek(page.dataoffsets[0] + y0 * row)
        rows = np.frombuffer(fh.read((y1 - y0) * row), dtype).reshape(y1 - y0, width, channels)
        return rows[:, x0:x1].astype(page.dtype)
    length, segment_width = page.chunks[:2]
    columns = page.chunked[1]
    indices = [r * columns + c for r in range(y0 // length, -(-y1 // length))
               for c in range(x0 // segment_width, -(-x1 // segment_width))]
    jpeg = ({"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
            if page.compression in JPEG_COMPRESSIONS else {})
    out = np.zeros((y1 - y0, x1 - x0, channels), page.dtype)  # empty segments stay 0
    for data, index in fh.read_segments([page.dataoffsets[i] for i in indices],
                                        [page.databytecounts[i] for i in indices], indices):
        segment, (_, _, sy, sx, _), _ = page.decode(data, index, **jpeg)
        if segment is None:
            continue
        segment = segment[0]
        ya, yb = max(y0, sy), min(y1, sy + segment.shape[0])
        xa, xb = max(x0, sx), min(x1, sx + segment.shape[1])
        out[ya - y0:yb - y0, xa - x0:xb - x0] = segment[ya - sy:yb - sy, xa - sx:xb - sx]
    return out


def _umask():
    """The process's file-mode creation mask, read without changing it for other threads where possible.

    Linux reports it in ``/proc/self/status``; elsewhere ``os.umask``, which can
    only be read by setting it, is set and restored at once.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def atomic_path(path):
    """Return a temporary path in the same folder as ``path`` (rename it onto ``path`` when complete)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    return tmp


def write_atomic(path, write):
    """Call ``write(tmp_path)`` and rename the result onto ``path``.

    A reader never sees a half-written file, even if the process is killed.
    """
    tmp = atomic_path(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's owner-only mode would hide results from the user's group
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            # A full disk fails inside write(), often without a file name: name the file being written.
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise


def remove_partial_files(folder):
    """Delete what writes interrupted by a kill left in ``folder`` and below.

    Those are the hidden temporary files of :func:`write_atomic` (``.<name>.*.tmp``)
    and of :func:`lib.model.saving.save_model_atomic` (``.<name>.*.tmp.keras``); no
    complete file ever has such a name.
    """
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and ".tmp" in name:
                os.remove(os.path.join(root, name))


def swap_into(new, path):
    """Put the complete file or folder ``new`` at ``path``, replacing what is there; return ``path``.

    The old ``path`` is renamed away first, ``new`` renamed into its place, and only then is the old one
    deleted: a crash or kill before the second rename leaves the old one whole (under the hidden
    name ``.<name>.removing.<pid>``, beside it); deletion is the last step, never the first.
    """
    path = os.path.abspath(path)
    trash = _trash_name(path)
    if os.path.lexists(path):
        os.rename(path, trash)
    os.rename(new, path)
    _delete(trash)
    return path


def remove_tree(path):
    """Delete a file or folder that the toolkit wrote (a staging store), renamed away first: a kill part-way
    leaves it whole under a hidden name, never half deleted at its own."""
    if os.path.lexists(path):
        trash = _trash_name(os.path.abspath(path))
        os.rename(path, trash)
        _delete(trash)


def _trash_name(path):
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.removing.{os.getpid()}")


def _delete(path):
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def write_tiff(path, array):
    """Write ``array`` as a zlib-compressed TIFF, atomically."""
    write_atomic(path, lambda tmp: tifffile.imwrite(tmp, array, compression="zlib"))


def write_text(path, text):
    """Write a text file atomically."""
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)

    write_atomic(path, write)


def rows_to_csv(rows, columns=()):
    """CSV text for a list of dicts; the header is ``columns``, then the other keys of the rows in order of
    appearance (a table without rows keeps its header)."""
    keys = list(columns)
    for row in rows:
        keys += [k for k in row if k not in keys]
    out = _io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()

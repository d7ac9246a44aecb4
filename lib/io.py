"""Reading and writing images, dataset discovery and image/mask pairing.

Dataset layout (Keras ImageDataGenerator style)::

    DATA_DIR/train/x/*.tif   images
    DATA_DIR/train/y/*.tif   masks, paired with the images by sorted name
    DATA_DIR/test/x, DATA_DIR/test/y

A file may hold one 2D image or a multi-page TIFF stack; stacks are split into
their slices (2D) or kept as volumes (3D). Masks are binary: any two values of
which one is 0 (0/1 and 0/255 are both common) or a single value.
"""

import csv
import io as _io
import os
import tempfile

import numpy as np
import tifffile

from .errors import UserError

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff")


def list_images(folder):
    """Return the sorted image files of ``folder``.

    Raises
    ------
    UserError
        If the folder is missing or holds no image file.
    """
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: folder not found")
    files = sorted(
        os.path.join(folder, f) for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
    )
    if not files:
        raise UserError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    return files


def find_subfolder(data_dir, split, kind):
    """Locate ``DATA_DIR/split/kind``, also accepting ``split/kind/kind`` (flow_from_directory style)."""
    folder = os.path.join(data_dir, split, kind)
    nested = os.path.join(folder, kind)
    if os.path.isdir(nested) and not any(
        f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(folder)
    ):
        return nested
    if not os.path.isdir(folder):
        raise UserError(
            f"{folder}: folder not found; expected {'images' if kind == 'x' else 'masks'} in "
            f"DATA_DIR/{{train,test}}/{kind}/ (one file per image, paired by sorted name)"
        )
    return folder


def dataset_pairs(data_dir, split):
    """Return sorted ``(image_path, mask_path)`` pairs of ``DATA_DIR/split``."""
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: DATA_DIR not found")
    x_dir = find_subfolder(data_dir, split, "x")
    y_dir = find_subfolder(data_dir, split, "y")
    xs, ys = list_images(x_dir), list_images(y_dir)
    if len(xs) != len(ys):
        raise UserError(
            f"{x_dir} has {len(xs)} images but {y_dir} has {len(ys)} masks; "
            "every image needs one mask (paired by sorted file name)"
        )
    return list(zip(xs, ys))


def read_image(path):
    """Read one image file as a NumPy array (2D, 2D with channels, or a stack).

    Raises
    ------
    UserError
        If the file cannot be decoded.
    """
    try:
        if path.lower().endswith(TIFF_EXTENSIONS):
            array = tifffile.imread(path)
        else:
            import skimage.io

            array = skimage.io.imread(path)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as exc:  # decoders raise many types for corrupt files
        raise UserError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "uif":
        raise UserError(f"{path}: unsupported pixel type {array.dtype}; expected integer or float pixels")
    return array


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


def as_mask_slices(array, path):
    """Split a mask array into binary 2D masks ``(H, W)`` uint8 {0, 1}.

    RGB(A) masks are accepted when their colour channels are identical.
    """
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
        if not all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, 3)):
            raise UserError(f"{path}: colour mask with differing channels; expected a single-channel binary mask")
        array = array[..., 0]
    slices = [array] if array.ndim == 2 else list(array) if array.ndim == 3 else None
    if slices is None:
        raise UserError(f"{path}: expected a 2D mask or a stack of 2D masks, got shape {array.shape}")
    return [binarize_mask(s, path) for s in slices]


def binarize_mask(mask, path):
    """Return ``mask`` as uint8 {0, 1}; raise UserError unless it is binary.

    Binary means at most two distinct values, one of which is 0 when there are two.
    """
    values = np.unique(mask)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise UserError(
            f"{path}: mask is not binary, found {len(values)} values ({shown}); "
            "expected background 0 and one foreground value (e.g. 0/1 or 0/255)"
        )
    return (mask > 0).astype(np.uint8)


def load_pairs_2d(pairs):
    """Read image/mask pairs as lists of 2D images ``(H, W, C)`` and masks ``(H, W)``.

    Multi-page files are split into slices, which must match in number and size.
    """
    images, masks, names = [], [], []
    for x_path, y_path in pairs:
        xs = as_image_slices(read_image(x_path), x_path)
        ys = as_mask_slices(read_image(y_path), y_path)
        if len(xs) != len(ys):
            raise UserError(f"{x_path} has {len(xs)} slices but its mask {y_path} has {len(ys)}")
        for i, (x, y) in enumerate(zip(xs, ys)):
            if x.shape[:2] != y.shape:
                raise UserError(
                    f"{x_path}: image size {x.shape[0]}x{x.shape[1]} differs from its mask "
                    f"{y_path} ({y.shape[0]}x{y.shape[1]})"
                )
            images.append(x)
            masks.append(y)
            stem = os.path.splitext(os.path.basename(x_path))[0]
            names.append(stem if len(xs) == 1 else f"{stem}_{i:04d}")
    channels = {x.shape[-1] for x in images}
    if len(channels) > 1:
        raise UserError(f"images have different channel counts {sorted(channels)}; expected all the same")
    dtypes = {x.dtype for x in images}
    if len(dtypes) > 1:
        raise UserError(f"images have different pixel types {sorted(map(str, dtypes))}; expected one type")
    return images, masks, names


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
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_tiff(path, array):
    """Write ``array`` as a zlib-compressed TIFF, atomically."""
    write_atomic(path, lambda tmp: tifffile.imwrite(tmp, array, compression="zlib"))


def write_text(path, text):
    """Write a text file atomically."""
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)

    write_atomic(path, write)


def rows_to_csv(rows):
    """CSV text for a list of dicts; the header is the union of their keys, in order of appearance."""
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    out = _io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()

"""Partly annotated training sets of docs/benchmarks.md "Partly annotated masks", made from a dataset folder.

    python tests/benchmarks/make_partial_sets.py ../shared/data/lucchi_dev OUT

writes OUT/erased_ignore (half of each training mask's objects set to 128: train with data.ignore_value=128),
OUT/erased_bg (the same objects set to 0) and OUT/sparse3d (the masks of every 10th training slice only); the
images and the test split are linked, not copied.
"""

import os
import sys

import numpy as np
import tifffile
from skimage.measure import label


def main(source, out):
    def linked(name):
        folder = os.path.join(out, name)
        os.makedirs(os.path.join(folder, "train", "y"), exist_ok=True)
        for link, target in (("test", "test"), (os.path.join("train", "x"), os.path.join("train", "x"))):
            if not os.path.exists(os.path.join(folder, link)):
                os.symlink(os.path.abspath(os.path.join(source, target)), os.path.join(folder, link))
        return folder

    names = sorted(os.listdir(os.path.join(source, "train", "y")))
    for name, value in (("erased_ignore", 128), ("erased_bg", 0)):
        folder, total, erased = linked(name), 0, 0
        for i, f in enumerate(names):
            mask = tifffile.imread(os.path.join(source, "train", "y", f))
            objects, n = label(mask > 0, return_num=True)
            gone = np.random.default_rng([7, i]).choice(np.arange(1, n + 1), n // 2, replace=False) if n else []
            mask[np.isin(objects, gone)] = value
            tifffile.imwrite(os.path.join(folder, "train", "y", f), mask, compression="zlib")
            total, erased = total + n, erased + len(gone)
        print(f"{name}: {erased} of {total} objects set to {value}")
    folder = linked("sparse3d")
    for f in names[::10]:
        tifffile.imwrite(os.path.join(folder, "train", "y", f), tifffile.imread(os.path.join(source, "train", "y", f)),
                         compression="zlib")
    print(f"sparse3d: the masks of {len(names[::10])} of {len(names)} slices")


if __name__ == "__main__":
    main(*sys.argv[1:3])

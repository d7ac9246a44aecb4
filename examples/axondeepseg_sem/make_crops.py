"""Make the demo data set of this folder from the AxonDeepSeg SEM data (see README.md here).

    python examples/axondeepseg_sem/make_crops.py SOURCE [OUT]

SOURCE is a copy of the AxonDeepSeg SEM set in the template layout, {train,test}/{x,y}/<name>.tif
(uint8 images; masks of class ids 0 background, 1 myelin, 2 axon), e.g. ../shared/data/axondeepseg_sem.
OUT (default: this script's folder) receives {train,test}/{x,y}/<name>_y<Y>_x<X>.tif: the crops
listed in CROPS, images and masks cut with the same box, written as zlib-compressed uint8 TIFFs.
Rerunning it gives the same files.
"""

import argparse
import os

import numpy as np
import tifffile

# (split, source image, top row Y, left column X, height, width). The four training images and the test image
# have pixels of 0.093-0.1 micrometres (data_axondeepseg_sem sidecar JSON files); sizes divisible by 16.
CROPS = [
    ("train", "sub-rat2_sample-data5_SEM", 220, 64, 512, 512),
    ("train", "sub-rat2_sample-data5_SEM", 220, 704, 512, 512),
    ("train", "sub-rat3_sample-data10_SEM", 120, 112, 512, 512),
    ("train", "sub-rat3_sample-data11_SEM", 160, 128, 512, 512),
    ("train", "sub-rat4_sample-data12_SEM", 128, 160, 512, 512),
    ("test", "sub-rat3_sample-data9_SEM", 2, 6, 752, 752),
]


def crop_name(name, y, x):
    return f"{name}_y{y:04d}_x{x:04d}.tif"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the AxonDeepSeg SEM set, {train,test}/{x,y}/<name>.tif")
    parser.add_argument("out", nargs="?", default=os.path.dirname(os.path.abspath(__file__)),
                        help="output folder (default: this script's folder)")
    args = parser.parse_args(argv)
    total = 0
    for split, name, y, x, h, w in CROPS:
        for kind in ("x", "y"):
            src = os.path.join(args.source, split, kind, name + ".tif")
            array = tifffile.imread(src)
            if array.dtype != np.uint8 or array.ndim != 2:
                raise SystemExit(f"{src}: expected a 2D uint8 image, got {array.dtype} {array.shape}")
            if y + h > array.shape[0] or x + w > array.shape[1]:
                raise SystemExit(f"{src}: box y={y} x={x} {h}x{w} exceeds the image {array.shape}")
            if kind == "y" and not set(np.unique(array)) <= {0, 1, 2}:
                raise SystemExit(f"{src}: expected class ids 0, 1, 2, got {np.unique(array)}")
            dst = os.path.join(args.out, split, kind, crop_name(name, y, x))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            tifffile.imwrite(dst, np.ascontiguousarray(array[y:y + h, x:x + w]), compression="zlib")
            total += os.path.getsize(dst)
            print(f"{dst}  ({h} x {w})")
    print(f"{len(CROPS)} crops, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

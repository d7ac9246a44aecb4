"""Draw predicted myelin and axon outlines on an EM image: the picture of `make demo` in the README.

    python examples/axondeepseg_sem/draw_outlines.py IMAGE LABELS OUT.png [--box Y X H W] [--zoom 2]

IMAGE: a 2D grey-level image (e.g. a test/x/ crop). LABELS: the label image of a 3-class run
(class ids 0 background, 1 myelin, 2 axon) of the same size, e.g. the mask that templates/predict.py
writes. The box (default: the whole image) is cut from both, enlarged ZOOM times (nearest neighbour:
pixels stay pixels), and the predicted outlines are drawn over the grey levels, one pixel of the
enlarged picture wide, in the colours of the run's charts/overlays.png: lime, the outer edge of each
myelin sheath (the outline of myelin and axon together); magenta, each axon (the sheath's inner
edge). The PNG has a palette of 128 grey levels and the two colours, which keeps it small.
"""

import argparse
import os
import sys

import numpy as np
import tifffile
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from lib.evaluate.reports import outline_rgb  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

COLOURS = {1: (0, 255, 0), 2: (255, 0, 255)}  # lime, magenta: lib.evaluate.reports.CLASS_COLOURS of classes 1 and 2
GREYS = 128  # grey levels kept in the picture


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("labels")
    parser.add_argument("out")
    parser.add_argument("--box", type=int, nargs=4, metavar=("Y", "X", "H", "W"))
    parser.add_argument("--zoom", type=int, default=2)
    args = parser.parse_args(argv)

    image, labels = tifffile.imread(args.image), tifffile.imread(args.labels)
    labels = labels.reshape(labels.shape[-2:])  # one slice, with or without a z axis of 1
    if image.shape != labels.shape:
        raise SystemExit(f"{args.labels}: size {labels.shape} differs from the image's {image.shape}")
    if args.box:
        y, x, h, w = args.box
        image, labels = image[y:y + h, x:x + w], labels[y:y + h, x:x + w]
    image = np.kron(image.astype(np.float32), np.ones((args.zoom, args.zoom), np.float32))
    labels = np.kron(labels, np.ones((args.zoom, args.zoom), labels.dtype))

    # Grey levels stretched, the outer edge of each myelin sheath (of myelin and axon together) outlined.
    rgb = outline_rgb(image[..., None], labels > 0, COLOURS[1])
    # A palette of GREYS grey levels and the two outline colours.
    index = (rgb[..., 0].astype(np.int32) * (GREYS - 1) + 127) // 255
    index[(rgb == COLOURS[1]).all(-1)] = GREYS
    index[find_boundaries(labels == 2, mode="inner")] = GREYS + 1  # axons (the sheath's inner edge), as outline_rgb draws
    palette = [v for g in np.linspace(0, 255, GREYS).round().astype(int) for v in (g, g, g)]
    picture = Image.fromarray(index.astype(np.uint8), mode="P")
    picture.putpalette(palette + list(COLOURS[1]) + list(COLOURS[2]))
    picture.save(args.out, optimize=True)
    print(f"{args.out}: {rgb.shape[1]} x {rgb.shape[0]} px, {os.path.getsize(args.out) / 1e3:.0f} kB")


if __name__ == "__main__":
    main()

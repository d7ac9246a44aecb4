"""Segment new images or volumes of any size with a trained model, block by block.

Usage::

    python templates/predict.py CODE_DIR INPUT OUTPUT --model MODEL [--gpu auto|cpu|0] \
        [--set inference.KEY=V] [--set post.KEY=V] [--scheduler local:N | tcp://HOST:PORT] [--overwrite]

MODEL is a run folder (its config.json gives normalisation, tile shape, overlap,
window, threshold and z-filter; weights from checkpoints/best.keras) or a
``.keras`` file (then give the options with ``--set``, e.g. ``data.crop_shape``).
INPUT: a 2D image or TIFF stack, a folder of slices, ``vol.zarr[/array]``
(zarr v2/v3, OME-Zarr) or ``vol.h5:dataset``. OUTPUT: ``OUT.zarr`` (OME-Zarr: the
probabilities, with the mask as its label image ``labels/mask``), ``OUT.tif`` (BigTIFF
mask, with ``OUT_prob.tif``) or a folder (``prob/`` and ``mask/`` TIFF slices), apart
from INPUT and MODEL; ``--overwrite`` replaces only an output of predict.py, once the
new one is complete. A multi-class model
(``model.classes`` K > 1) writes the label image (class ids 0..K-1) as ``mask`` and
the probability of every class as ``prob`` (a channel axis first in zarr, K TIFF
pages per slice). Killed and run again, it resumes; see docs/large-data.md.
"""

import os
import sys

sys.path[:0] = [os.path.abspath(p) for p in sys.argv[1:2] + [os.path.join(os.path.dirname(__file__), "..")]]

from lib.run import cli, devices  # noqa: E402


def main(argv=None):
    args = cli.parse_predict_args(argv, description=__doc__.splitlines()[0])
    args.gpu = devices.select_device(args.gpu, args.threads)  # auto becomes an index or cpu
    from lib.run import predicting

    plan = predicting.plan(args)  # every check; nothing is written before it returns
    predicting.run(plan)


if __name__ == "__main__":
    with cli.user_errors():
        main()

"""Models on disk: ``.keras`` files written atomically and read back, and the Keras model of a Model Zoo package.

Keras-free at import: run folders name their checkpoints (:data:`BEST`, :data:`LAST`) before Keras starts.
"""

import os
import tempfile

BEST, LAST = "best.keras", "last.keras"


def load_model(path, compile=False):
    """The Keras model of the ``.keras`` file ``path``, whose project objects (losses, metrics, optimisers,
    layers such as ``SectionConv``) are registered first, so that it loads in a process that built no network.

    ``compile``: also restore the loss and the optimiser with its state (a resumed run).
    """
    import keras

    from . import losses, metrics, optimizers  # noqa: F401  (register the project's Keras objects)
    from .networks import blocks  # noqa: F401  (and its layers)

    return keras.models.load_model(path, compile=compile)


def save_model_atomic(model, path):
    """Save ``model`` in the ``.keras`` format under a temporary name, then rename."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_package_model(package):
    """The Keras model of a BioImage Model Zoo package's ``keras_v3`` weights (``train.pretrained=PACKAGE.zip``).

    Raises ValueError when the package has no ``keras_v3`` weights.
    """
    import zipfile

    from bioimageio.spec import load_description

    descr = load_description(package, perform_io_checks=False)
    weights = getattr(getattr(descr, "weights", None), "keras_v3", None)
    if weights is None:
        raise ValueError("no keras_v3 weights in the package (only those are fine-tuned)")
    name = str(weights.source.path if hasattr(weights.source, "path") else weights.source).split("/")[-1]
    with zipfile.ZipFile(package) as archive, tempfile.TemporaryDirectory() as tmp:
        archive.extract(name, tmp)
        return load_model(os.path.join(tmp, name))

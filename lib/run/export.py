"""Export a trained run as a BioImage Model Zoo package (format 0.5), for deepImageJ, ilastik, napari and bioimageio.core.

    python -m lib.run.export RUN_DIR OUT.zip [--image TEST_IMAGE] [--author NAME] [--license CC-BY-4.0]

The package holds:

- weights: ``keras_v3`` (the run's best checkpoint, without its optimiser; run by
  bioimageio.core and ilastik on any Keras backend) and, where TensorFlow is
  installed, a ``tensorflow_saved_model_bundle`` converted from it (run by
  deepImageJ and bioimageio.core without this project's code);
- one input ``raw`` ``(batch, [z,] y, x, channel)`` of the training images' pixel
  type, with the run's normalisation as preprocessing (``per_image``: min-max
  over the image, ``scale_range``; ``dtype_max``: ``scale_linear`` by 1 / the
  dtype's maximum; ``zscore``: ``fixed_zero_mean_unit_variance`` with the training
  mean and std); sizes of at least the training crop, in steps of the network's
  downsampling;
- one output ``probability`` ``(batch, [z,] y, x, channel)`` of the model's
  channels (1: the foreground probability, the sigmoid inside the model; K: the
  class probabilities), with a halo of ``inference.overlap`` / 2 of the tile on
  each side: the border that tiled prediction blends away. The threshold of the
  binary mask is ``inference.threshold``, written in the README and ``config``;
- test input and output tensors (``.npy``): a centred tile of a test image, and
  the exported weights' prediction of it; a cover picture; a README; citations.

The package is validated with ``bioimageio.spec`` when written, and the test
output is reproduced from the weights as read back from the zip.
"""

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

from .. import config as config_lib
from ..data import io, layout, targets
from ..errors import UserError
from . import folders, paths

INPUT, OUTPUT = "raw", "probability"


TOLERANCE = 1e-4  # absolute: the exported weights reproduce the test output within it


# The paper of each network (the paper folders' READMEs cite the same).
CITATIONS = {
    "unet": ("Ronneberger, O., Fischer, P. and Brox, T. U-Net: Convolutional networks for biomedical image "
             "segmentation. MICCAI 2015.", "10.1007/978-3-319-24574-4_28"),
    "resunet": ("Zhang, Z., Liu, Q. and Wang, Y. Road extraction by deep residual U-Net. IEEE Geoscience and "
                "Remote Sensing Letters 15(5), 2018.", "10.1109/LGRS.2018.2802944"),
    "attention_unet": ("Oktay, O. et al. Attention U-Net: Learning where to look for the pancreas. MIDL 2018.",
                       "10.48550/arXiv.1804.03999"),
    "seunet": ("Hu, J., Shen, L. and Sun, G. Squeeze-and-excitation networks. CVPR 2018.",
               "10.1109/CVPR.2018.00745"),
    "multiresunet": ("Ibtehaz, N. and Rahman, M. S. MultiResUNet: Rethinking the U-Net architecture for "
                     "multimodal biomedical image segmentation. Neural Networks 121, 2020.",
                     "10.1016/j.neunet.2019.08.025"),
    "cheng2d": ("Cheng, H. and Varshney, A. Volume segmentation using convolutional neural networks with "
                "limited training data. 2017 IEEE International Conference on Image Processing (ICIP), "
                "pp. 590-594.", "10.1109/ICIP.2017.8296349"),
    "xiao2018": ("Xiao, C., Chen, X., Li, W., Li, L., Wang, L., Xie, Q. and Han, H. Automatic mitochondria "
                 "segmentation for EM data using a 3D supervised convolutional network. Frontiers in "
                 "Neuroanatomy 12:92, 2018.", "10.3389/fnana.2018.00092"),
}


CITATIONS["cheng3d"] = CITATIONS["cheng2d"]


NETWORK_NAMES = {"unet": "U-Net", "resunet": "residual U-Net", "attention_unet": "attention U-Net",
                 "seunet": "squeeze-and-excitation U-Net", "multiresunet": "MultiResUNet",
                 "cheng2d": "Cheng and Varshney 2017 network", "cheng3d": "Cheng and Varshney 2017 network",
                 "xiao2018": "Xiao et al 2018 network"}


NAME_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")  # the zoo's


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m lib.run.export",
        description="Write a trained run as a BioImage Model Zoo package (format 0.5) for deepImageJ, ilastik, "
                    "napari and bioimageio.core.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder JOB_DIR/ID_RID with checkpoints/best.keras")
    parser.add_argument("output", metavar="OUT.zip", help="the package to write (a .zip file)")
    parser.add_argument("--image", help="the image (2D run) or volume (3D run) whose centred tile makes the test "
                                        "tensors; default: the first image of the run's DATA_DIR/test/x")
    parser.add_argument("--name", help="the model's name (default: from the network and the run)")
    parser.add_argument("--author", action="append", help="an author of the model (repeat for several; default: "
                                                          "the user name)")
    parser.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the weights (default CC-BY-4.0)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.zip if it exists")
    return parser.parse_args(argv)


def main(argv=None):
    from .cli import user_errors

    args = parse_args(argv)
    with user_errors():
        export(args)


def check_args(args):
    """The run's ``(config, checkpoint, environment)``, after every check of the arguments; writes nothing."""
    run_dir = args.run_dir
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isdir(run_dir) or not os.path.isfile(config_path):
        raise UserError(f"RUN_DIR {run_dir}: " + ("not found" if not os.path.exists(run_dir) else
                        "not a run folder (no config.json)") + "; expected a run folder JOB_DIR/ID_RID")
    checkpoint = folders.run_checkpoint(run_dir)
    if checkpoint is None:
        raise UserError(f"RUN_DIR {run_dir}: no trained model (checkpoints/best.keras or last.keras); train the run "
                        "first")
    if args.name is not None and (not args.name.strip() or set(args.name) - NAME_CHARACTERS):
        raise UserError(f"--name {args.name!r}: expected letters, digits, spaces and _ + - ( ) only (the zoo's rule), "
                        f"not {''.join(sorted(set(args.name) - NAME_CHARACTERS)) or 'an empty name'}")
    if not args.output.endswith(".zip"):
        raise UserError(f"OUT.zip {args.output}: expected a file name ending in .zip")
    paths.check_apart(("OUT.zip", args.output), [("RUN_DIR", run_dir), ("--image", args.image)])
    if os.path.lexists(args.output):
        if not is_package(args.output):
            raise UserError(f"OUT.zip {args.output}: already exists and is not a BioImage Model Zoo package (no "
                            "rdf.yaml in a zip); it is never replaced, even with --overwrite; choose another OUT.zip")
        if not args.overwrite:
            raise UserError(f"OUT.zip {args.output}: already exists; use --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UserError(f"OUT.zip {args.output}: cannot write in {parent}")
    cfg = config_lib.from_dict(config_lib.load_json(config_path), source=config_path, ignore_unknown_sections=True)
    environment = {}
    if os.path.isfile(os.path.join(run_dir, "environment.json")):
        environment = config_lib.load_json(os.path.join(run_dir, "environment.json"))
    if cfg.data.normalization == "zscore" and not os.path.isfile(os.path.join(run_dir, "normalization.json")):
        raise UserError(f"RUN_DIR {run_dir}: data.normalization=zscore but normalization.json (the training mean "
                        "and std) is missing")
    return cfg, checkpoint, environment


def is_package(path):
    """True when ``path`` is a zip file holding ``rdf.yaml``: a model package, which ``--overwrite`` may replace."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return "rdf.yaml" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def test_image_path(args, environment):
    """``--image``, or the first image of the run's ``DATA_DIR/test/x`` (from its recorded command)."""
    if args.image:
        if not os.path.isfile(args.image):
            raise UserError(f"--image {args.image}: not found; expected an image or volume file")
        return [args.image]
    data_dir = environment.get("data_dir") or _data_dir_of(environment.get("command", ""))
    if not data_dir or not os.path.isdir(os.path.join(data_dir, "test", "x")):
        raise UserError(f"RUN_DIR {args.run_dir}: its test images ({data_dir or 'DATA_DIR'}/test/x) are not found "
                        "from here; give one with --image")
    return [x for x, _ in layout.dataset_pairs(data_dir, "test", masks_optional=True)]


def _data_dir_of(command):
    """DATA_DIR of a template's recorded command line (its second positional argument), or None."""
    words = [w for w in command.split() if not w.startswith("-")]
    return words[2] if len(words) > 2 and not words[0].startswith("-") else None


def read_test_item(paths, ndim):
    """The raw test image ``(*spatial, C)`` (2D: the first image or slice; 3D: the volume), its pixel type."""
    if ndim == 2:
        return io.as_image_slices(io.read_image(paths[0]), paths[0])[0]
    if len(paths) == 1:
        images, _, _ = layout.load_pairs_3d([(paths[0], None)], "test")
    else:
        images, _, _ = layout.load_pairs_3d([(p, None) for p in paths], "test")
    return images[0]


def centre_tile(image, tile):
    """The centred window of ``tile`` (spatial sizes) of ``image`` ``(*spatial, C)``, as a batch of one."""
    spatial = image.shape[:-1]
    if any(s < t for s, t in zip(spatial, tile)):
        raise UserError(f"the test image of {'x'.join(map(str, spatial))} is smaller than the tile "
                        f"{'x'.join(map(str, tile))} (data.crop_shape); give a larger one with --image")
    key = tuple(slice((s - t) // 2, (s - t) // 2 + t) for s, t in zip(spatial, tile))
    return np.ascontiguousarray(image[key])[None]


def normalise(x, cfg, run_dir):
    """``x`` as the package's preprocessing makes it (the run's ``data.normalization``, per sample)."""
    from ..data import intensity

    method = cfg.data.normalization
    stats = None
    if method == "zscore":
        stats = config_lib.load_json(os.path.join(run_dir, "normalization.json"))
    if method == "per_image":  # bioimageio's scale_range: (x - min) / (max - min + eps)
        lo, hi = float(x.min()), float(x.max())
        return intensity.affine_float32(x, lo, hi - lo + 1e-6)
    return intensity.normalize(x, method, stats)


def preprocessing(cfg, run_dir, dtype, ndim):
    """The package's preprocessing steps for ``data.normalization``."""
    from bioimageio.spec.model import v0_5

    method = cfg.data.normalization
    spatial = [v0_5.AxisId(a) for a in "zyx"[3 - ndim:]]
    if method == "per_image":
        steps = [v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(axes=spatial, min_percentile=0.0,
                                                                   max_percentile=100.0, eps=1e-6))]
    elif method == "dtype_max":
        steps = [v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
                 v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearKwargs(gain=1.0 / float(np.iinfo(dtype).max)))]
    else:
        stats = config_lib.load_json(os.path.join(run_dir, "normalization.json"))
        steps = [v0_5.FixedZeroMeanUnitVarianceDescr(kwargs=v0_5.FixedZeroMeanUnitVarianceKwargs(
            mean=float(stats["mean"]), std=float(stats["std"])))]
    return steps + [v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32"))]


def inference_model(checkpoint, cfg):
    """The run's network read from ``checkpoint``, with its main output only (deep supervision's others dropped)."""
    import importlib

    import keras

    from ..model.saving import load_model

    importlib.import_module(config_lib.MODELS[cfg.model.name])  # a paper folder's layers
    model = load_model(checkpoint)
    if len(model.outputs) > 1:
        model = keras.Model(model.inputs, model.outputs[0], name=model.name)
    return model


def write_weights(model, folder, ndim, channels):
    """``(keras_v3 file, SavedModel zip or None)`` of ``model`` in ``folder``; the SavedModel needs TensorFlow."""
    import keras

    keras_file = os.path.join(folder, "weights.keras")
    model.save(keras_file)
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return keras_file, None
    if keras.backend.backend() != "tensorflow":
        return keras_file, None
    saved = os.path.join(folder, "tf_saved_model")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: {OUTPUT: model(x, training=False)},
                         input_signature=[keras.InputSpec(shape=(None,) * (ndim + 1) + (channels,), dtype="float32")])
    archive.write_out(saved, verbose=False)
    bundle = shutil.make_archive(os.path.join(folder, "tf_saved_model_bundle"), "zip", saved)
    shutil.rmtree(saved)
    return keras_file, bundle


def export(args):
    """Check the arguments, write the package to ``args.output``, validate it and reproduce its test output."""
    cfg, checkpoint, environment = check_args(args)
    paths = test_image_path(args, environment)
    ndim = len(cfg.data.crop_shape)
    image = read_test_item(paths, ndim)
    if ndim == 2 and cfg.data.normalization == "dtype_max" and image.dtype.kind not in "ui":
        raise UserError(f"data.normalization=dtype_max needs integer test images, got {image.dtype} ({paths[0]})")
    tile = tuple(int(t) for t in cfg.data.crop_shape)
    test_input = centre_tile(image, tile)

    import keras

    from ..model.networks import count_params, divisor

    model = inference_model(checkpoint, cfg)
    channels = int(model.input_shape[-1])
    if test_input.shape[-1] != channels:
        raise UserError(f"the test image {paths[0]} has {test_input.shape[-1]} channels, the model takes {channels}")
    test_output = keras.ops.convert_to_numpy(model.predict(normalise(test_input, cfg, args.run_dir), verbose=0))
    test_output = test_output.astype(np.float32)
    steps = divisor(cfg.model, ndim)
    halo = [int(t * cfg.inference.overlap) // 2 for t in tile]

    with tempfile.TemporaryDirectory(prefix=".export-", dir=os.path.dirname(os.path.abspath(args.output))) as tmp:
        keras_file, bundle = write_weights(model, tmp, ndim, channels)
        files = {"test_input": os.path.join(tmp, "test_input.npy"), "test_output": os.path.join(tmp, "test_output.npy"),
                 "cover": os.path.join(tmp, "cover.png"), "readme": os.path.join(tmp, "README.md")}
        np.save(files["test_input"], test_input)
        np.save(files["test_output"], test_output)
        write_cover(normalise(test_input, cfg, args.run_dir), test_output, files["cover"])
        info = describe(cfg, args, environment, model, tile, halo, steps, test_output.shape[-1], bundle is not None)
        with open(files["readme"], "w") as fh:
            fh.write(readme(info))
        descr = model_description(info, cfg, args.run_dir, test_input.dtype, files, keras_file, bundle,
                                  count_params(model))
        partial = os.path.join(tmp, "package.zip")
        save_package(descr, partial)
        difference = reproduce(partial, test_input, test_output, cfg, args.run_dir)
        os.replace(partial, args.output)
    formats = "keras_v3" + (", tensorflow_saved_model_bundle" if bundle else "")
    print(f"Wrote {args.output}: BioImage Model Zoo format 0.5, weights {formats}; bioimageio.spec validation "
          f"passed; the exported weights reproduce the test output within {difference:.2g} (max abs difference)")
    return difference


def describe(cfg, args, environment, model, tile, halo, steps, classes, saved_model):
    """The facts of the package that its README and description share."""
    run = os.path.basename(os.path.abspath(args.run_dir))
    network = NETWORK_NAMES.get(cfg.model.name, cfg.model.name)
    return {
        "name": args.name or f"EM {network} {len(tile)}D ({run})",
        "run": run, "network": network, "model": cfg.model.name, "ndim": len(tile), "tile": list(tile),
        "halo": halo, "steps": list(steps), "classes": classes, "threshold": cfg.inference.threshold,
        "targets": cfg.model.targets,
        "normalization": cfg.data.normalization, "channels": int(model.input_shape[-1]),
        "backend": environment.get("backend", "tensorflow"), "keras": environment.get("keras", "3"),
        "saved_model": saved_model, "overlap": cfg.inference.overlap,
        "authors": args.author or [os.environ.get("USER") or "unknown"], "license": args.license,
    }


NORMALIZATION_TEXT = {
    "per_image": "min-max to [0, 1] over each input image (bioimageio `scale_range`, percentiles 0 and 100)",
    "dtype_max": "divided by the largest value of the pixel type, e.g. 255 for 8-bit (bioimageio `scale_linear`)",
    "zscore": "the training mean subtracted, divided by the training standard deviation "
              "(bioimageio `fixed_zero_mean_unit_variance`)",
}


def channel_names(info):
    """The names of the output channels: foreground, the classes, or the instance channels."""
    if info.get("targets", "mask") != "mask":
        return list(targets.CHANNELS[info["targets"]])
    return ["foreground"] if info["classes"] == 1 else [f"class{i}" for i in range(info["classes"])]


def output_text(info):
    if info.get("targets", "mask") != "mask":
        return (f"{len(channel_names(info))} sigmoid channels for objects ({', '.join(channel_names(info))}; "
                "model.targets=" + info["targets"] + "): the objects are grown from seeds where the foreground is "
                "high and the contour low, as `lib.predict.instances.from_channels` does")
    return ("the foreground probability (the sigmoid is the model's last layer)" if info["classes"] == 1 else
            f"the probabilities of {info['classes']} classes (softmax); the label image is their argmax")


def _task(info):
    return "semantic segmentation" if info.get("targets", "mask") == "mask" else "instance segmentation"


def _output_kind(info):
    if info.get("targets", "mask") != "mask":
        return f"instance channels ({', '.join(channel_names(info))})"
    return "foreground probability" if info["classes"] == 1 else "class probabilities"


def readme(info):
    axes = "z, y, x" if info["ndim"] == 3 else "y, x"
    output = output_text(info)
    weights = "`keras_v3` (`weights.keras`)" + (", `tensorflow_saved_model_bundle` (for deepImageJ)"
                                                 if info["saved_model"] else "")
    citation = CITATIONS.get(info["model"])
    return f"""# {info['name']}

{_task(info).capitalize()} of electron-microscopy images with a {info['network']} ({info['ndim']}D), trained with the EM
segmentation toolkit (run `{info['run']}`, Keras {info['keras']}, {info['backend']} backend).

## Input and output

- Input `{INPUT}`: axes batch, {axes}, channel ({info['channels']} channel(s)). Preprocessing: {NORMALIZATION_TEXT[info['normalization']]}.
- Tiles: at least {' x '.join(map(str, info['tile']))} (the training crop), in steps of {' x '.join(map(str, info['steps']))}.
- Output `{OUTPUT}`: the input's size, {output}. Halo {' x '.join(map(str, info['halo']))} on each side: the border that
  overlapping tiles should discard or blend (the toolkit blends tiles overlapping by {info['overlap']}).
- Binary mask: probability > {info['threshold']} (`inference.threshold` of the run).

Weights: {weights}.

## Validation

The package's test input is a centred tile of a test image of the run, and its test output is the prediction of
these weights; `bioimageio.core` reproduces it (`bioimageio test PACKAGE.zip`). The run's metrics on its test set
(foreground IoU, Dice, precision, recall, object-level DET/SEG) are in the run folder's `metrics.json`.

## Citation

{citation[0] + f' doi:{citation[1]}' if citation else info['network']}
"""


def write_cover(normalised, probabilities, path):
    """A 2:1 cover picture: the test tile (3D: its middle slice) beside its prediction."""
    from PIL import Image

    from ..train.tensorboard import picture_row

    Image.fromarray((picture_row(normalised[0], probabilities[0]) * 255).astype(np.uint8)).save(path)


def model_description(info, cfg, run_dir, dtype, files, keras_file, bundle, parameters):
    """The bioimageio ``ModelDescr`` (format 0.5) of the package."""
    import keras
    from bioimageio.spec.model import v0_5

    ndim = info["ndim"]
    spatial = "zyx"[3 - ndim:]
    in_axes = [v0_5.BatchAxis()]
    out_axes = [v0_5.BatchAxis()]
    for axis, tile, step, halo in zip(spatial, info["tile"], info["steps"], info["halo"]):
        in_axes.append(v0_5.SpaceInputAxis(id=v0_5.AxisId(axis), size=v0_5.ParameterizedSize(min=tile, step=step)))
        out_axes.append(v0_5.SpaceOutputAxisWithHalo(
            id=v0_5.AxisId(axis), halo=halo,
            size=v0_5.SizeReference(tensor_id=v0_5.TensorId(INPUT), axis_id=v0_5.AxisId(axis))))
    in_axes.append(v0_5.ChannelAxis(channel_names=[v0_5.Identifier(f"channel{i}") for i in range(info["channels"])]))
    names = channel_names(info)
    out_axes.append(v0_5.ChannelAxis(channel_names=[v0_5.Identifier(n) for n in names]))
    data_type = str(np.dtype(dtype)) if np.dtype(dtype).name in (
        "uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64") else "float32"
    inputs = [v0_5.InputTensorDescr(
        id=v0_5.TensorId(INPUT), axes=in_axes, test_tensor=v0_5.FileDescr(source=files["test_input"]),
        data=v0_5.IntervalOrRatioDataDescr(type=data_type), preprocessing=preprocessing(cfg, run_dir, dtype, ndim))]
    outputs = [v0_5.OutputTensorDescr(
        id=v0_5.TensorId(OUTPUT), axes=out_axes, test_tensor=v0_5.FileDescr(source=files["test_output"]),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        description=f"probability; binary mask where > {info['threshold']}")]
    backend = keras.backend.backend()
    weights = {"keras_v3": v0_5.KerasV3WeightsDescr(
        source=keras_file, keras_version=v0_5.Version(keras.__version__),
        backend=(backend, v0_5.Version(_backend_version(backend))))}
    if bundle:
        import tensorflow as tf

        weights["tensorflow_saved_model_bundle"] = v0_5.TensorflowSavedModelBundleWeightsDescr(
            source=bundle, tensorflow_version=v0_5.Version(tf.__version__), parent="keras_v3")
    try:
        return _model_descr(v0_5, info, inputs, outputs, weights, parameters, files)
    except ValueError as exc:  # pydantic's ValidationError: e.g. an --author or --license the zoo refuses
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        raise UserError(f"the package description is invalid at {'.'.join(map(str, first['loc'])) or 'its top'}: "
                        f"{first['msg']}") from None


def _model_descr(v0_5, info, inputs, outputs, weights, parameters, files):
    ndim = info["ndim"]
    citation = CITATIONS.get(info["model"])
    cite = [v0_5.CiteEntry(text=citation[0], doi=v0_5.Doi(citation[1]))] if citation else [
        v0_5.CiteEntry(text="Ronneberger, O. et al. U-Net, MICCAI 2015.", doi=v0_5.Doi(CITATIONS["unet"][1]))]
    return v0_5.ModelDescr(
        name=info["name"],
        description=f"{info['network']} ({ndim}D) for {_task(info)} of electron-microscopy images; "
                    f"output: {_output_kind(info)}",
        authors=[v0_5.Author(name=name) for name in info["authors"]],
        cite=cite, license=v0_5.LicenseId(info["license"]),
        documentation=v0_5.FileDescr(source=files["readme"]), covers=[v0_5.FileDescr(source=files["cover"])],
        tags=["electron-microscopy", _task(info).replace(" ", "-"), f"{ndim}d", info["model"], "keras"],
        inputs=inputs, outputs=outputs, weights=v0_5.WeightsDescr(**weights),
        config=v0_5.Config(bioimageio=v0_5.BioimageioConfig(
            model_parameter_count=int(parameters), task=_task(info),
            modality="electron microscopy", architecture_type=info["network"][:32]),
            emseg={"run": info["run"], "threshold": info["threshold"], "tile": info["tile"],
                   "overlap": info["overlap"], "normalization": info["normalization"]}),
    )


def _backend_version(backend):
    import importlib

    return importlib.import_module({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]).__version__


def save_package(descr, path):
    """Write ``descr`` as a zip package at ``path``, validating it with bioimageio.spec (UserError if invalid)."""
    from bioimageio.spec import load_description, save_bioimageio_package

    save_bioimageio_package(descr, output_path=path)
    loaded = load_description(path, format_version="discover")
    summary = loaded.validation_summary
    if summary.status != "valid-format" and summary.status != "passed":
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
        raise UserError(f"the package did not pass bioimageio.spec validation ({summary.status}): "
                        + "; ".join(errors[:3]))


def reproduce(package, test_input, test_output, cfg, run_dir):
    """Max abs difference between the package's test output and its ``keras_v3`` weights' prediction, read from the zip.

    Raises UserError above :data:`TOLERANCE`.
    """
    import zipfile

    import keras

    from ..model.saving import load_model

    with zipfile.ZipFile(package) as archive, tempfile.TemporaryDirectory() as tmp:
        archive.extract("weights.keras", tmp)
        model = load_model(os.path.join(tmp, "weights.keras"))
        stored = np.load(archive.open("test_output.npy"))
        given = np.load(archive.open("test_input.npy"))
    if not np.array_equal(given, test_input):
        raise UserError(f"{package}: its test input differs from the one written")
    predicted = keras.ops.convert_to_numpy(model.predict(normalise(given, cfg, run_dir), verbose=0))
    difference = float(np.max(np.abs(predicted - stored)))
    if difference > TOLERANCE:
        raise UserError(f"{package}: the exported weights predict the test input with a difference of {difference} "
                        f"from the test output (more than {TOLERANCE})")
    return difference


if __name__ == "__main__":
    sys.exit(main())

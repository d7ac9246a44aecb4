"""One experiment run, in one order, for every entry script.

:func:`run` is the body of every template's and paper script's ``main()``. It
owns the order of the steps, so that a step added to the pipeline (an input
format, a report) is added once for all of them:

1. the command line, then the device (before Keras is imported), then the
   configuration: defaults <- the script's ``CONFIG`` <- ``--config`` <- ``--set``;
2. every check that the options and data allow, writing nothing: the run
   folder (``--overwrite``, resume), the script's own option checks, the data
   (read and normalised, or opened from zarr / HDF5 stores), the split and the
   crops, the pretrained model, the network built and its pretrained weights
   loaded. A refusal here leaves JOB_DIR as it was;
3. the run folder (``config.json``, ``environment.json``), with what it records
   before training: ``normalization.json``, ``samples/``, ``model.txt``;
4. training (checkpoints, history, time limit; resumed when the run folder holds
   an unfinished run);
5. the test set, every variant, predictions written under ``predictions/``, then
   the script's own variants;
6. the report: charts, ``metrics.json``, the ``summary.csv`` row, the table.

What differs between scripts is passed in: the kind of data (``data``), and,
for the paper folders, their option section (``sections``), their option checks
(``check``), their pre-processing of the loaded sets (``prepare``) and their extra
variants (``variants``). Their networks are named in ``lib.config.MODELS``.
"""

import dataclasses
import gc
import os

from . import cli, devices, folders

# data= : (read and check the data (lib.run.datasets), split it into training data (lib.run.training_data),
# spatial axes)
DATA = {
    "2d": ("load_2d", "training_data_2d", 2),              # 2D images in memory
    "streamed": ("open_2d_streamed", "training_data_streamed", 2),  # 2D images read from disk as needed
    "3d": ("load_3d", "training_data_3d", 3),              # volumes (in memory, or zarr / HDF5 stores)
}


def run(template_config, argv=None, *, data, description, sections=None, check=None, prepare=None, variants=None):
    """Run one experiment: train on ``DATA_DIR/train``, evaluate on ``DATA_DIR/test``, report.

    Parameters
    ----------
    template_config : dict
        The entry script's ``CONFIG`` block.
    argv : list of str, optional
        The command line (default ``sys.argv[1:]``).
    data : {'2d', 'streamed', '3d'}
        How the data are read (:data:`DATA`).
    description : str
        First line of ``--help``.
    sections : dict, optional
        The script's own option sections, ``{name: dataclass}`` (:func:`lib.config.config_class`);
        the configuration then has ``cfg.<name>``.
    check : callable, optional
        ``check(cfg)``: raise UserError for options the script cannot run; before the data are read.
    prepare : callable, optional
        ``prepare(cfg, train_set, test_set[, val_set])``: pre-processing of the loaded sets, in place, before
        the training data are cut from them (e.g. histogram equalisation); ``val_set`` is that of
        ``DATA_DIR/val``, given when it exists.
    variants : callable, optional
        ``variants(cfg, test_set, predictions_dir) -> {name: metrics}``: more variants, computed
        after lib's (e.g. from their predictions) and reported beside them.

    Returns
    -------
    str: the run folder.
    """
    if data not in DATA:
        raise ValueError(f"data: expected one of {', '.join(DATA)}, got {data!r}")
    load, split, ndim = DATA[data]

    args = cli.parse_args(argv, description=description)
    args.gpu = devices.select_device(args.gpu, args.threads)  # auto becomes an index or cpu
    cfg = cli.load_config(template_config, args, sections)
    precision = devices.run_precision(cfg.train.precision, ndim, args.gpu)  # auto: what this machine runs fastest
    devices.check_tensorboard(cfg.train.tensorboard)
    if cfg.train.deterministic:
        devices.deterministic_environment()

    folders.check_run_dir(args, cfg)
    if check is not None:
        check(cfg)
    from . import datasets, record, training_data

    train_set, test_set = getattr(datasets, load)(args.data_dir, cfg)
    # Keras is imported once the options and data are checked, so that bad input is refused at once.
    from ..evaluate import evaluation
    from ..model import mixed_precision, networks
    from ..predict.inference import make_predictor
    from ..train import finetune, loop

    devices.check_backend_gpus(args.gpu)
    scope, replicas = devices.distribution(args.gpu, cfg.train.batch_size)  # before the backend runs anything
    pretrained = folders.resolve_pretrained(cfg.train.pretrained, args.job_dir)
    if prepare is not None:
        prepare(cfg, train_set, test_set, *([] if train_set.validation is None else [train_set.validation]))
    devices.seed_everything(cfg.train.seed)
    train_data, val_data = getattr(training_data, split)(train_set, cfg)
    class_weights = training_data.class_weights(train_set, cfg)
    validation = training_data.validation_source(train_set, cfg)
    print(f"Validation set: {validation}")

    with scope:
        with mixed_precision.precision(precision):
            model = networks.build_network(cfg.model, (None,) * ndim + (train_set.channels,))
        finetune.load_pretrained(model, pretrained, cfg.train.freeze_encoder)
        run_dir = folders.create_run_dir(args, cfg)
        record.record_training_data(train_set, train_data, cfg, run_dir)
        record.record_model(model, run_dir)
        model, info = loop.train(model, train_data, val_data, dataclasses.replace(cfg.train, precision=precision),
                                 run_dir, class_weights, replicas, cfg.model.targets,
                                 training_data.object_f1(val_data, cfg))
    info["precision"] = precision
    if class_weights:
        info["class_weights"] = class_weights
    info["train_peak_rss_mb"] = record.peak_rss_mb()
    info["validation"] = validation

    # Free the training data, so that the recorded peak memory of inference is that of inference alone.
    train_data.release()
    del train_set, train_data, val_data
    gc.collect()
    info["inference_start_rss_mb"] = record.reset_peak_rss()
    predictions = os.path.join(run_dir, "predictions")
    results, sweeps = evaluation.evaluate_test_set(make_predictor(model), test_set, cfg.data.crop_shape, cfg,
                                                   predictions, record=info)
    if variants is not None:
        results.update(variants(cfg, test_set, predictions) or {})
    info["inference_peak_rss_mb"] = record.peak_rss_mb()
    print(f"Peak memory (RSS): training {info['train_peak_rss_mb']:.0f} MB, inference "
          f"{info['inference_peak_rss_mb']:.0f} MB (of which {info['inference_start_rss_mb'] or 0:.0f} MB were "
          "held before inference began)")
    return record.finish(args, run_dir, results, sweeps, info)

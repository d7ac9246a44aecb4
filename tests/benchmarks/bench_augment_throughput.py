"""Training throughput with the default augmentation pipeline against the same model fed pre-made batches.

One U-Net with the template's default settings (``ModelConfig()``: depth 4,
16 filters; 256 x 256 crops, ``TrainConfig()`` batch size and workers) is
trained on:

- augmented: a ``CropDataset`` over in-memory images (8 slices of
  ``../shared/data/lucchi_dev/train``, or random 768 x 1024 images without it),
  a new random crop per sample and the default ``Augmenter`` (``AugmentConfig()``),
  made while the model trains;
- pre-made: a ``PyDataset`` handing out batches made beforehand by the same
  pipeline, so that no data work happens during training.

Both are compiled once and trained in alternate epochs (the first of each
untimed), so the load of a shared machine weighs on both alike. ``ratio`` =
augmented / pre-made samples per second, target >= 0.90 (the augmentation
hides behind the model's compute); ``pipeline_ms_per_batch`` is the time to
make one batch, beside ``premade_ms_per_step``, the model's. Prints one JSON line. Run with
``python tests/benchmarks/bench_augment_throughput.py`` or under pytest
(``make bench``); ``EMSEG_BENCH_EPOCHS`` sets the timed epochs of each (default 3).
"""

import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO, "..", "shared", "data", "lucchi_dev", "train", "x")
CROP = (256, 256)
IMAGES, REPLICATE = 8, 4
TARGET = 0.90


def load_images():
    """Normalised images ``(H, W, 1)`` and masks: lucchi_dev slices when present, else random ones."""
    from lib.data import intensity, layout

    if os.path.isdir(DATA):
        pairs = layout.dataset_pairs(os.path.dirname(os.path.dirname(DATA)), "train")[:IMAGES]
        images, masks, _ = layout.load_pairs_2d(pairs)
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (768, 1024, 1), dtype=np.uint8) for _ in range(IMAGES)]
        masks = [(rng.random((768, 1024)) < 0.06).astype(np.uint8) for _ in range(IMAGES)]
    return [intensity.normalize(x, "per_image") for x in images], masks


def run(epochs):
    """Train alternately on augmented and pre-made batches; return the JSON record."""
    sys.path.insert(0, REPO)
    import keras

    from lib.config import AugmentConfig, ModelConfig, TrainConfig
    from lib.data.augment import Augmenter
    from lib.data.generators import CropDataset
    from lib.model.networks import build_model
    from lib.train.loop import compile_model

    class PreMade(keras.utils.PyDataset):
        def __init__(self, batches):
            super().__init__()
            self.batches = batches

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, index):
            return self.batches[index]

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    train_cfg = TrainConfig()
    images, masks = load_images()
    augmented = CropDataset(images, masks, CROP, train_cfg.batch_size, augmenter=Augmenter(AugmentConfig(), 2),
                            replicate=REPLICATE, seed=0, workers=train_cfg.workers)
    start = time.perf_counter()
    premade = PreMade([augmented[i] for i in range(len(augmented))])
    pipeline_ms = (time.perf_counter() - start) / len(augmented) * 1000
    model = compile_model(build_model(ModelConfig(), (None, None, 1)), train_cfg)
    timer = EpochTimer()
    seconds = {"augmented": 0.0, "premade": 0.0}
    for round_ in range(epochs + 1):
        order = ("augmented", "premade") if round_ % 2 else ("premade", "augmented")
        for name in order:
            model.fit(augmented if name == "augmented" else premade, epochs=1, verbose=0, callbacks=[timer])
            if round_:  # the first round builds, traces and warms up
                seconds[name] += timer.seconds
    samples = epochs * len(augmented.images) * REPLICATE
    rates = {name: samples / s for name, s in seconds.items()}
    return {
        "benchmark": "augment_throughput",
        "ratio": round(rates["augmented"] / rates["premade"], 4),
        "augmented_samples_per_s": round(rates["augmented"], 2),
        "premade_samples_per_s": round(rates["premade"], 2),
        "pipeline_ms_per_batch": round(pipeline_ms, 2),
        "premade_ms_per_step": round(seconds["premade"] / (epochs * len(augmented)) * 1000, 1),
        "timed_epochs": epochs,
        "steps_per_epoch": len(augmented),
        "crop": list(CROP),
        "batch_size": train_cfg.batch_size,
        "workers": train_cfg.workers,
        "data": "lucchi_dev" if os.path.isdir(DATA) else "random",
        "target": TARGET,
    }


def n_epochs():
    return int(os.environ.get("EMSEG_BENCH_EPOCHS", "3"))


def test_augmentation_hides_behind_training():
    record = run(n_epochs())
    print(json.dumps(record))
    assert record["ratio"] > 0


if __name__ == "__main__":
    print(json.dumps(run(n_epochs())))

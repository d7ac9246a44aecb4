"""The real EM shipped for ``make demo`` (examples/axondeepseg_sem): a valid data set, its licence, its picture."""

import os
import subprocess
import sys

import numpy as np
import tifffile
from PIL import Image

from conftest import REPO
from lib.data import layout

DEMO = os.path.join(REPO, "examples", "axondeepseg_sem")


def test_the_demo_set_is_a_three_class_data_set_in_the_template_layout():
    for split, count in (("train", 5), ("test", 1)):
        images, masks, names = layout.load_pairs_2d(layout.dataset_pairs(DEMO, split), classes=3)
        assert len(images) == count and all(x.dtype == np.uint8 and x.shape[-1] == 1 for x in images)
        for mask in masks:
            assert set(np.unique(mask)) == {0, 1, 2}  # background, myelin, axon
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(DEMO) for f in files)
    assert size < 3e6


def test_the_demo_set_carries_its_source_and_licence():
    with open(os.path.join(DEMO, "LICENSE")) as fh:
        assert fh.read().startswith("MIT License")
    with open(os.path.join(DEMO, "README.md")) as fh:
        readme = fh.read()
    assert "10.5281/zenodo.5498378" in readme and "axondeepseg/data_axondeepseg_sem" in readme


def test_draw_outlines_draws_each_class_on_the_enlarged_image(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (40, 48), np.uint8)
    labels = np.zeros((40, 48), np.uint8)
    labels[5:20, 5:20], labels[9:16, 9:16] = 1, 2  # a myelin sheath around an axon
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels[None])  # as predict.py writes a 2D image: z of 1
    out = tmp_path / "picture.png"
    result = subprocess.run([sys.executable, os.path.join(DEMO, "draw_outlines.py"), str(tmp_path / "image.tif"),
                             str(tmp_path / "labels.tif"), str(out), "--box", "0", "0", "32", "32"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rgb = np.asarray(Image.open(out).convert("RGB"))
    assert rgb.shape == (64, 64, 3)  # the 32 x 32 box, enlarged twice
    colours = {tuple(c) for c in rgb.reshape(-1, 3)}
    assert (0, 255, 0) in colours and (255, 0, 255) in colours  # myelin's outer edge, the axon


def test_draw_outlines_refuses_labels_of_another_size(tmp_path):
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((40, 48), np.uint8))
    tifffile.imwrite(tmp_path / "labels.tif", np.zeros((40, 40), np.uint8))
    result = subprocess.run([sys.executable, os.path.join(DEMO, "draw_outlines.py"), str(tmp_path / "image.tif"),
                             str(tmp_path / "labels.tif"), str(tmp_path / "p.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "differs from the image's" in result.stderr
    assert not (tmp_path / "p.png").exists()

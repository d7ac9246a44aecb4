import os

import numpy as np
import pytest
import tifffile

from conftest import blob_pair, write_pairs
from lib.data import io, layout
from lib.errors import UserError


def test_pairs_sorted_and_binarised(tmp_path):
    pairs = [blob_pair(seed=i) for i in range(3)]
    write_pairs(str(tmp_path), "train", [p[0] for p in pairs], [p[1] for p in pairs])
    found = layout.dataset_pairs(str(tmp_path), "train")
    assert [os.path.basename(x) for x, _ in found] == ["000.tif", "001.tif", "002.tif"]
    images, masks, names = layout.load_pairs_2d(found)
    assert images[0].shape == (64, 64, 1) and images[0].dtype == np.uint8
    assert set(np.unique(masks[0])) == {0, 1} and masks[0].dtype == np.uint8
    assert names == ["000", "001", "002"]


def test_multipage_tiff_is_split_into_slices(tmp_path):
    stack = np.random.default_rng(0).integers(0, 255, (5, 32, 40), dtype=np.uint8)
    labels = (stack > 128).astype(np.uint8)
    for kind, a in (("x", stack), ("y", labels)):
        os.makedirs(tmp_path / "train" / kind)
        tifffile.imwrite(tmp_path / "train" / kind / "vol.tif", a)
    images, masks, names = layout.load_pairs_2d(layout.dataset_pairs(str(tmp_path), "train"))
    assert len(images) == 5 and images[2].shape == (32, 40, 1)
    assert np.array_equal(masks[3], labels[3]) and names[4] == "vol_0004"


def test_png_images_are_read(tmp_path):
    import skimage.io

    image, mask = blob_pair()
    for kind, a in (("x", image), ("y", mask)):
        os.makedirs(tmp_path / "train" / kind)
        skimage.io.imsave(tmp_path / "train" / kind / "a.png", a, check_contrast=False)
    images, masks, _ = layout.load_pairs_2d(layout.dataset_pairs(str(tmp_path), "train"))
    assert np.array_equal(images[0][..., 0], image) and masks[0].sum() == (mask > 0).sum()


def test_nested_flow_from_directory_layout(tmp_path):
    image, mask = blob_pair()
    for kind, a in (("x", image), ("y", mask)):
        os.makedirs(tmp_path / "train" / kind / kind)
        tifffile.imwrite(tmp_path / "train" / kind / kind / "a.tif", a)
    assert len(layout.dataset_pairs(str(tmp_path), "train")) == 1


def test_missing_mask_folder(tmp_path):
    image, _ = blob_pair()
    os.makedirs(tmp_path / "train" / "x")
    tifffile.imwrite(tmp_path / "train" / "x" / "a.tif", image)
    with pytest.raises(UserError, match=r"train/y: folder not found; expected masks"):
        layout.dataset_pairs(str(tmp_path), "train")


def test_count_mismatch_names_both_folders(tmp_path):
    pairs = [blob_pair(seed=i) for i in range(10)]
    write_pairs(str(tmp_path), "train", [p[0] for p in pairs], [p[1] for p in pairs[:9]])
    with pytest.raises(UserError, match=r"train/x has 10 images but .*train/y has 9 masks"):
        layout.dataset_pairs(str(tmp_path), "train")


def test_three_valued_mask_is_refused(tmp_path):
    image, mask = blob_pair()
    mask[:5, :5] = 128
    write_pairs(str(tmp_path), "train", [image], [mask])
    with pytest.raises(UserError, match=r"000.tif: mask is not binary, found 3 values \(0, 128, 255\)"):
        layout.load_pairs_2d(layout.dataset_pairs(str(tmp_path), "train"))


def test_size_mismatch_is_refused(tmp_path):
    image, mask = blob_pair()
    write_pairs(str(tmp_path), "train", [image], [mask[:, :60]])
    with pytest.raises(UserError, match=r"image size 64x64 differs from its mask .* \(64x60\)"):
        layout.load_pairs_2d(layout.dataset_pairs(str(tmp_path), "train"))


def test_corrupt_tiff_is_named(tmp_path):
    image, mask = blob_pair()
    write_pairs(str(tmp_path), "train", [image], [mask])
    path = tmp_path / "train" / "x" / "000.tif"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UserError, match=r"000.tif: cannot read image"):
        layout.load_pairs_2d(layout.dataset_pairs(str(tmp_path), "train"))


def test_rgb_mask_with_equal_channels_is_accepted(tmp_path):
    image, mask = blob_pair()
    write_pairs(str(tmp_path), "train", [image], [np.stack([mask] * 3, axis=-1)])
    _, masks, _ = layout.load_pairs_2d(layout.dataset_pairs(str(tmp_path), "train"))
    assert masks[0].shape == (64, 64)


def test_atomic_write_leaves_no_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"

    def fail(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        io.write_atomic(str(target), fail)
    assert list(tmp_path.iterdir()) == []


def test_pairs_follow_the_numbers_in_the_names(tmp_path):
    pairs = [blob_pair(seed=i) for i in range(12)]
    write_pairs(str(tmp_path), "train", [p[0] for p in pairs], [p[1] for p in pairs])
    for kind, pattern in (("x", "img{}.tif"), ("y", "mask_{:04d}.tif")):
        folder = tmp_path / "train" / kind
        for i in range(12):
            os.rename(folder / f"{i:03d}.tif", folder / pattern.format(i + 1))
    found = layout.dataset_pairs(str(tmp_path), "train")
    assert [(os.path.basename(x), os.path.basename(y)) for x, y in found][8:] == [
        ("img9.tif", "mask_0009.tif"), ("img10.tif", "mask_0010.tif"), ("img11.tif", "mask_0011.tif"),
        ("img12.tif", "mask_0012.tif")]
    os.remove(tmp_path / "train" / "y" / "mask_0003.tif")
    tifffile.imwrite(tmp_path / "train" / "y" / "mask_0013.tif", pairs[0][1])
    with pytest.raises(UserError, match=r"img3.tif is paired with the mask .*mask_0004.tif, whose number differs "
                                        r"\(3 vs 4\)"):
        layout.dataset_pairs(str(tmp_path), "train")


def _png_pair(tmp_path, image_mode, image, mask_mode, mask, palette=None):
    from PIL import Image

    for kind, mode, array in (("x", image_mode, image), ("y", mask_mode, mask)):
        (tmp_path / "train" / kind).mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(array, mode=mode)
        if mode == "P":
            picture.putpalette(palette)
        picture.save(tmp_path / "train" / kind / "000.png")
    return layout.dataset_pairs(str(tmp_path), "train")


def test_grey_alpha_image_and_palette_mask_are_read_as_meant(tmp_path):
    image, mask = blob_pair()
    pairs = _png_pair(tmp_path, "LA", np.stack([image, np.full_like(image, 255)], -1),
                      "P", (mask > 0).astype(np.uint8), palette=[0, 0, 0, 255, 0, 0] + [0] * 762)
    images, masks, _ = layout.load_pairs_2d(pairs)
    np.testing.assert_array_equal(images[0], image[..., None])
    np.testing.assert_array_equal(masks[0], mask > 0)
    images, masks, _ = layout.index_pairs_2d(pairs)  # streamed from disk
    np.testing.assert_array_equal(images[0].read(), image[..., None])
    np.testing.assert_array_equal(io.read_mask(masks[0]), mask > 0)


def test_planar_rgb_tiff_is_one_colour_image(tmp_path):
    path = tmp_path / "rgb.tif"
    rgb = np.stack([blob_pair(seed=i)[0] for i in range(3)])
    tifffile.imwrite(path, rgb, photometric="rgb", planarconfig="separate")
    (image,) = io.as_image_slices(io.read_image(str(path)), str(path))
    np.testing.assert_array_equal(image, np.moveaxis(rgb, 0, -1))
    assert [s.shape for s in io.file_slices(str(path))] == [(64, 64, 3)]


def test_empty_png_says_the_file_is_empty(tmp_path):
    path = tmp_path / "000.png"
    path.write_bytes(b"")
    with pytest.raises(UserError, match=r"000.png: cannot read image: the file is empty \(0 bytes\)"):
        io.read_image(str(path))

"""Tests of lib.data.augment on small synthetic images and volumes."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from lib.config import AugmentConfig
from lib.data.augment import Augmenter
from lib.errors import UserError

PROBABILITIES = tuple(f.name for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_p"))
GEOMETRIC = ("rotation_p", "zoom_p", "shift_p", "shear_p", "elastic_p")
INTENSITY = ("brightness_p", "contrast_p", "gamma_p", "blur_p", "median_p", "noise_p")
# Stronger than the defaults so that the deformation is visible on small test images.
STRONG_ELASTIC = {"elastic_alpha": 200.0, "elastic_sigma": 6.0}


def only(*names, **values):
    """An AugmentConfig with every transform off except ``names`` (p=1)."""
    probabilities = {p: 1.0 if p in names else 0.0 for p in PROBABILITIES}
    return AugmentConfig(**probabilities, **values)


def blobs(shape, seed=0, channels=1, size=4.0):
    """Smooth random image in [0, 1], shape (*shape, channels), and its mask image > 0.5.

    ``size`` is the in-plane Gaussian sigma of the blobs; sections are independent.
    """
    rng = np.random.default_rng(seed)
    sigma = (0,) * (len(shape) - 2) + (size, size)
    field = ndi.gaussian_filter(rng.random(shape), sigma)
    field = (field - field.min()) / (field.max() - field.min())
    image = np.repeat(field[..., None], channels, axis=-1).astype(np.float32)
    return image, (field > 0.5).astype(np.uint8)


def run(cfg, ndim, image, mask, seed=0):
    return Augmenter(cfg, ndim)(image, mask, np.random.default_rng(seed))


SHAPES = {2: (48, 48), 3: (6, 32, 32)}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", PROBABILITIES)
def test_each_transform_alone_keeps_shapes_dtypes_and_binary_mask(name, ndim):
    image, mask = blobs(SHAPES[ndim], channels=2)
    extra = STRONG_ELASTIC if name == "elastic_p" else {}
    out_image, out_mask = run(only(name, **extra), ndim, image, mask)
    assert out_image.shape == image.shape and out_image.dtype == np.float32
    assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
    assert set(np.unique(out_mask)) <= {0, 1}
    assert np.isfinite(out_image).all()
    assert not np.shares_memory(out_image, image) and not np.shares_memory(out_mask, mask)


@pytest.mark.parametrize("ndim", [2, 3])
def test_flips_undo_exactly(ndim):
    image, mask = blobs(SHAPES[ndim], channels=2)
    out_image, out_mask = run(only("flip_p"), ndim, image, mask)
    axes = tuple(range(ndim))
    np.testing.assert_array_equal(np.flip(out_image, axes), image)
    np.testing.assert_array_equal(np.flip(out_mask, axes), mask)


@pytest.mark.parametrize("ndim", [2, 3])
def test_rot90_undoes_exactly_and_uses_every_quarter_turn_on_square_planes(ndim):
    image, mask = blobs(SHAPES[ndim])
    seen = set()
    for seed in range(12):
        out_image, out_mask = run(only("rot90_p"), ndim, image, mask, seed)
        k = next(k for k in (1, 2, 3) if np.array_equal(np.rot90(out_mask, -k, axes=(-2, -1)), mask))
        np.testing.assert_array_equal(np.rot90(out_image, -k, axes=(-3, -2)), image)
        seen.add(k)
    assert seen == {1, 2, 3}


def test_rot90_on_non_square_plane_is_a_half_turn():
    image, mask = blobs((4, 24, 40))
    out_image, out_mask = run(only("rot90_p"), 3, image, mask)
    assert out_image.shape == image.shape
    np.testing.assert_array_equal(out_image, image[:, ::-1, ::-1])
    np.testing.assert_array_equal(out_mask, mask[:, ::-1, ::-1])


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("names", [(g,) for g in GEOMETRIC] + [GEOMETRIC])
def test_geometric_transforms_keep_mask_aligned_with_image(names, ndim):
    shape = {2: (96, 96), 3: (3, 96, 96)}[ndim]
    # Nearest and linear resampling disagree only along edges: few, smooth edges.
    image, mask = blobs(shape, seed=1, size=6.0)
    cfg = only(*names, zoom_range=[0.7, 1.3], shift_range=0.2, shear_range=20.0, **STRONG_ELASTIC)
    for seed in range(3):
        out_image, out_mask = run(cfg, ndim, image, mask, seed)
        assert not np.array_equal(out_mask, mask)
        inner = (slice(None),) * (ndim - 2) + (slice(8, -8), slice(8, -8))
        agreement = np.mean((out_image[..., 0] > 0.5)[inner] == out_mask[inner].astype(bool))
        assert agreement >= 0.97


def test_geometric_transform_is_the_same_for_every_section():
    image, mask = blobs((48, 48))
    volume = np.repeat(image[None], 4, axis=0)
    volume_mask = np.repeat(mask[None], 4, axis=0)
    out_image, out_mask = run(only(*GEOMETRIC, **STRONG_ELASTIC), 3, volume, volume_mask)
    assert not np.array_equal(out_image, volume)
    for z in range(1, 4):
        np.testing.assert_array_equal(out_image[z], out_image[0])
        np.testing.assert_array_equal(out_mask[z], out_mask[0])


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", INTENSITY)
def test_intensity_transforms_change_image_only(name, ndim):
    image, mask = blobs(SHAPES[ndim])
    out_image, out_mask = run(only(name, blur_sigma=[1.0, 2.0]), ndim, image, mask)
    np.testing.assert_array_equal(out_mask, mask)
    assert not np.array_equal(out_image, image)


def test_intensity_transforms_do_what_their_names_say():
    image, mask = blobs((48, 48))
    bright, _ = run(only("brightness_p", brightness_range=0.2), 2, image, mask)
    delta = bright - image
    assert np.ptp(delta) < 1e-5 and 0 < abs(delta.flat[0]) <= 0.2
    contrasted, _ = run(only("contrast_p", contrast_range=[1.5, 2.0]), 2, image, mask)
    assert contrasted.mean() == pytest.approx(image.mean(), abs=1e-5)
    assert 1.5 <= contrasted.std() / image.std() <= 2.0
    # Z-scored input: gamma works on the min-max rescaled image and keeps the range.
    zscored = (image - image.mean()) / image.std()
    gamma, _ = run(only("gamma_p", gamma_range=[2.0, 2.0]), 2, zscored, mask)
    assert gamma.min() == pytest.approx(zscored.min(), abs=1e-5)
    assert gamma.max() == pytest.approx(zscored.max(), abs=1e-5)
    assert gamma.mean() < zscored.mean()


def test_blur_acts_within_sections_only():
    image = np.zeros((*SHAPES[3], 1), np.float32)
    image[3, 16, 16] = 1.0
    mask = np.zeros(SHAPES[3], np.uint8)
    out, _ = run(only("blur_p", blur_sigma=[1.0, 1.0]), 3, image, mask)
    assert np.all(out[[0, 1, 2, 4, 5]] == 0)
    assert out[3, 16, 17, 0] > 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_same_seed_gives_same_output(ndim):
    image, mask = blobs(SHAPES[ndim])
    cfg = only(*PROBABILITIES, **STRONG_ELASTIC)
    first = run(cfg, ndim, image, mask, seed=7)
    second = run(cfg, ndim, image, mask, seed=7)
    other = run(cfg, ndim, image, mask, seed=8)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("ndim", [2, 3])
def test_disabled_is_identity(ndim):
    image, mask = blobs(SHAPES[ndim])
    cfg = only(*PROBABILITIES, enabled=False)
    out_image, out_mask = run(cfg, ndim, image, mask)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    assert out_image is not image and out_mask is not mask


def test_missing_section_changes_exactly_one_slice_to_blank_or_neighbour():
    image, mask = blobs((8, 32, 32), channels=2)
    kinds = set()
    for seed in range(12):
        out_image, out_mask = run(only("missing_section_p"), 3, image, mask, seed)
        np.testing.assert_array_equal(out_mask, mask)
        changed = [z for z in range(8) if not np.array_equal(out_image[z], image[z])]
        assert len(changed) == 1
        z = changed[0]
        if np.array_equal(out_image[z], np.broadcast_to(image.mean(axis=(0, 1, 2)), image[z].shape)):
            kinds.add("blank")
        else:
            assert any(np.array_equal(out_image[z], image[n]) for n in (z - 1, z + 1) if 0 <= n < 8)
            kinds.add("duplicate")
    assert kinds == {"blank", "duplicate"}


def test_misalignment_shifts_image_and_mask_from_one_section_on():
    image, mask = blobs((8, 40, 40), channels=2)
    m = 5
    for seed in range(6):
        out_image, out_mask = run(only("misalignment_p", misalignment_max_shift=m), 3, image, mask, seed)
        changed = [z for z in range(8) if not np.array_equal(out_image[z], image[z])]
        start = changed[0]
        assert start >= 1 and changed == list(range(start, 8))
        np.testing.assert_array_equal(out_mask[:start], mask[:start])
        inner = (slice(None), slice(m, -m), slice(m, -m))
        shifts = [
            (dy, dx)
            for dy in range(-m, m + 1)
            for dx in range(-m, m + 1)
            if np.array_equal(
                out_image[start:][inner], np.roll(image[start:], (dy, dx), axis=(1, 2))[inner]
            )
        ]
        assert len(shifts) == 1 and shifts[0] != (0, 0)
        dy, dx = shifts[0]
        rolled_mask = np.roll(mask[start:], (dy, dx), axis=(1, 2))
        np.testing.assert_array_equal(out_mask[start:][inner], rolled_mask[inner])
        # Uncovered borders are filled like the warp's 'reflect' mode.
        expected = ndi.shift(mask[start:], (0, dy, dx), order=0, mode="reflect")
        np.testing.assert_array_equal(out_mask[start:], expected)


# --------------------------------------------------------------------------- weight maps

EXACT = ("flip_p", "rot90_p", "misalignment_p")  # transforms that move pixels without resampling them


@pytest.mark.parametrize("ndim", [2, 3])
def test_weight_map_follows_the_image_through_every_geometric_transform_and_defect(ndim):
    image, mask = blobs(SHAPES[ndim], channels=2)
    weight = image[..., 1].copy()
    cfg = only(*GEOMETRIC, *EXACT, zoom_range=[0.7, 1.3], shift_range=0.2, misalignment_max_shift=4,
               **STRONG_ELASTIC)
    for seed in range(3):
        out_image, out_mask, out_weight = Augmenter(cfg, ndim)(image, mask, np.random.default_rng(seed), weight=weight)
        assert out_weight.shape == mask.shape and out_weight.dtype == np.float32
        assert not np.array_equal(out_weight, weight)
        # resampled linearly, with the image's own coordinates
        np.testing.assert_array_equal(out_weight, out_image[..., 1])


@pytest.mark.parametrize("ndim", [2, 3])
def test_weight_map_equal_to_the_mask_stays_equal_to_it(ndim):
    image, mask = blobs(SHAPES[ndim], channels=2)
    probe = mask.astype(np.float32)
    cfg = only(*EXACT, *INTENSITY, "missing_section_p", misalignment_max_shift=4)
    for seed in range(6):
        _, out_mask, out_weight = Augmenter(cfg, ndim)(image, mask, np.random.default_rng(seed), weight=probe)
        np.testing.assert_array_equal(out_weight, out_mask)
    # Elastic: the weights are interpolated linearly, the mask takes its nearest pixel, so they agree exactly
    # wherever the four pixels around a sampled point agree, and elsewhere once the weight is rounded.
    cfg = only("elastic_p", "misalignment_p", misalignment_max_shift=4, **STRONG_ELASTIC)
    for seed in range(3):
        _, out_mask, out_weight = Augmenter(cfg, ndim)(image, mask, np.random.default_rng(seed), weight=probe)
        assert not np.array_equal(out_mask, mask)
        np.testing.assert_array_equal(out_mask[out_weight < 1e-6], 0)
        np.testing.assert_array_equal(out_mask[out_weight > 1 - 1e-6], 1)
        assert np.mean((out_weight > 0.5) == out_mask.astype(bool)) > 0.99


@pytest.mark.parametrize("name, ndim", [(n, d) for d in (2, 3) for n in INTENSITY] + [("missing_section_p", 3)])
def test_image_only_transforms_leave_mask_and_weight_map_untouched(name, ndim):
    image, mask = blobs(SHAPES[ndim])
    weight = np.linspace(1.0, 2.0, mask.size, dtype=np.float32).reshape(mask.shape)
    out_image, out_mask, out_weight = Augmenter(only(name, blur_sigma=[1.0, 2.0]), ndim)(
        image, mask, np.random.default_rng(0), weight=weight)
    assert not np.array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)
    np.testing.assert_array_equal(out_weight, weight)
    assert not np.shares_memory(out_weight, weight)


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_weight_map_changes_no_random_draw(ndim):
    image, mask = blobs(SHAPES[ndim])
    cfg = only(*PROBABILITIES, **STRONG_ELASTIC)
    without = run(cfg, ndim, image, mask, seed=3)
    with_weight = Augmenter(cfg, ndim)(image, mask, np.random.default_rng(3), weight=np.ones(mask.shape))
    np.testing.assert_array_equal(with_weight[0], without[0])
    np.testing.assert_array_equal(with_weight[1], without[1])


def test_section_defects_are_ignored_in_2d():
    image, mask = blobs((32, 32))
    out_image, out_mask = run(only("missing_section_p", "misalignment_p"), 2, image, mask)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_mask, mask)


def test_all_transforms_on_a_256_image_run():
    image, mask = blobs((256, 256))
    out_image, out_mask = run(only(*PROBABILITIES), 2, image, mask)
    assert out_image.shape == (256, 256, 1) and out_mask.shape == (256, 256)
    assert set(np.unique(out_mask)) <= {0, 1}


def test_bad_inputs_raise_clear_errors():
    image, mask = blobs((16, 16))
    with pytest.raises(ValueError, match="ndim must be 2 or 3"):
        Augmenter(AugmentConfig(), 4)
    with pytest.raises(UserError, match="augment.flip_p"):
        Augmenter(AugmentConfig(flip_p=1.5), 2)
    augmenter = Augmenter(AugmentConfig(), 2)
    with pytest.raises(ValueError, match="expected image"):
        augmenter(image[..., 0], mask, np.random.default_rng(0))
    with pytest.raises(ValueError, match="expected image"):
        augmenter(image, mask[:8], np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"weight \(8, 16\)"):
        augmenter(image, mask, np.random.default_rng(0), weight=np.ones((8, 16)))

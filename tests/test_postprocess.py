import numpy as np
import pytest
from scipy import ndimage as ndi

from lib.evaluate.metrics import pixel_metrics
from lib.predict.postprocess import ZFilterStream, binarize, oztel, refine_boundaries, remove_low_confidence, z_filter


def test_binarize_keeps_values_on_the_threshold():
    probs = np.array([0.2, 0.5, 0.7], np.float32)
    out = binarize(probs, 0.5)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="threshold"):
        binarize(probs, 1.5)
    with pytest.raises(ValueError, match="probs"):
        binarize(probs * 2, 0.5)


def test_z_filter_removes_single_slice_spike():
    stack = np.zeros((7, 4, 5), np.float32)
    stack[3, 1, 2] = 1.0
    stack[:, 3, 4] = 0.8
    out = z_filter(stack, 3)
    assert out.dtype == np.float32 and out.shape == stack.shape
    assert out[3, 1, 2] == 0.0
    np.testing.assert_array_equal(out[:, 3, 4], stack[:, 3, 4])


def test_z_filter_preserves_constant_stack_and_dtype():
    stack = np.ones((5, 3, 3), bool)
    out = z_filter(stack, 5)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, stack)


@pytest.mark.parametrize("size", [0, 2, 3.0])
def test_z_filter_rejects_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        z_filter(np.zeros((3, 2, 2)), size)


def test_z_filter_rejects_2d():
    with pytest.raises(ValueError, match="Z, Y, X"):
        z_filter(np.zeros((3, 2)), 3)


def _disk(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _scene(seed=0):
    """EM-like image of a bright disk, and a prediction that overshoots it by 3 px."""
    shape = (48, 80)
    rng = np.random.default_rng(seed)
    truth = _disk(shape, (24, 24), 10)
    image = ndi.gaussian_filter(np.where(truth, 0.8, 0.2), 1.0)
    image = (image + rng.normal(0, 0.02, shape)).astype(np.float32)
    probs = np.full(shape, 0.05, np.float32)
    probs[_disk(shape, (24, 24), 13)] = 0.9
    probs[_disk(shape, (24, 64), 5)] = 0.55  # low-confidence blob
    return probs, image, truth


def test_remove_low_confidence_drops_uncertain_blob():
    probs, _, _ = _scene()
    kept = remove_low_confidence(probs, 0.5, 0.6)
    np.testing.assert_array_equal(kept, probs >= 0.9)


def test_oztel_filters_blobs_and_snaps_to_edges():
    scenes = [_scene(seed) for seed in range(2)]
    probs = np.stack([s[0] for s in scenes])
    image = np.stack([s[1] for s in scenes])
    truth = np.stack([s[2] for s in scenes])

    out = oztel(probs, image)
    assert out.dtype == np.uint8 and out.shape == probs.shape
    assert not out[:, :, 50:].any()  # the low-confidence blob is gone
    before = pixel_metrics([probs >= 0.5], [truth])["fg_iou"]
    after = pixel_metrics([out], [truth])["fg_iou"]
    assert after > before + 0.2
    assert after > 0.9
    # A stack is processed slice by slice.
    np.testing.assert_array_equal(out[1], oztel(probs[1], image[1]))


def test_refine_boundaries_keeps_objects_thinner_than_the_markers():
    mask = np.zeros((9, 20), bool)
    mask[4, 2:18] = True
    image = np.zeros(mask.shape, np.float32)
    out = refine_boundaries(mask, image, marker_radius=3)
    assert out[4, 2:18].all()


def test_oztel_validates_inputs():
    probs, image, _ = _scene()
    with pytest.raises(ValueError, match="shape"):
        oztel(probs, image[:, :-1])
    with pytest.raises(ValueError, match="threshold"):
        oztel(probs, image, threshold=0.0)
    with pytest.raises(ValueError, match="min_mean_prob"):
        oztel(probs, image, min_mean_prob=1.2)
    with pytest.raises(ValueError, match="marker_radius"):
        oztel(probs, image, marker_radius=0)
    with pytest.raises(ValueError, match="Y, X"):
        oztel(probs[None, None], image[None, None])


def _stream(stack, size):
    stream, out, held = ZFilterStream(size), [], []
    for i, s in enumerate(stack):
        out += stream.push(s, i)
        held.append(len(stream._slices))
    out += stream.flush()
    return out, max(held)


@pytest.mark.parametrize("n", [1, 2, 3, 6])
@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, bool])
def test_z_filter_stream_equals_z_filter_in_bounded_memory(n, size, dtype):
    rng = np.random.default_rng(n * 10 + size)
    stack = (rng.random((n, 4, 5)) * 3).astype(dtype)
    out, held = _stream(stack, size)
    assert [payload for _, payload in out] == list(range(n))  # every slice once, in order
    filtered = np.stack([s for s, _ in out])
    assert filtered.dtype == stack.dtype
    np.testing.assert_array_equal(filtered, z_filter(stack, size))
    assert held <= size


def test_z_filter_stream_restarts_after_flush_and_checks_shapes():
    stream = ZFilterStream(3)
    stream.push(np.ones((2, 2)))
    assert len(stream.flush()) == 1
    assert len(stream.push(np.zeros((3, 3)))) == 0  # a new stack of another shape
    with pytest.raises(ValueError, match="shape"):
        stream.push(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="odd"):
        ZFilterStream(4)


def test_z_filter_removes_flicker_of_a_tube():
    # A tube through 9 slices, missing on slice 4 and doubled by a spurious blob on slice 6.
    truth = np.zeros((9, 16, 16), np.uint8)
    truth[:, 4:10, 4:10] = 1
    pred = truth.copy()
    pred[4, 5:9, 5:9] = 0
    pred[6, 12:15, 12:15] = 1
    np.testing.assert_array_equal(z_filter(pred, 3), truth)
    out, _ = _stream(pred, 3)
    np.testing.assert_array_equal(np.stack([s for s, _ in out]), truth)


def test_refine_boundaries_keeps_close_neighbours_apart():
    from lib.evaluate.metrics import object_metrics

    truth = np.zeros((40, 40), np.uint8)
    truth[10:30, 5:18] = 1
    truth[10:30, 20:33] = 1  # 2 pixels apart, less than 2 x marker_radius
    image = truth.astype(np.float32)  # edges exactly at the true boundaries
    out = refine_boundaries(truth, image, marker_radius=3)
    assert not out[:, 18:20].any()  # the gap stays background
    assert np.count_nonzero(out != truth) <= 8  # at most the corners, which the Sobel gradient rounds
    probs = np.where(truth, 0.95, 0.05).astype(np.float32)
    assert object_metrics(oztel(probs, image), truth)["det"] == 1.0

"""Tests of parcourse.chapters.video: the GOP-parallel encoding equals the serial one (chapter 6)."""

import numpy as np
import pytest

from parcourse.chapters import video


def test_dct_is_orthonormal_and_quantisation_round_trips_within_half_a_step():
    c = video.dct_matrix()
    np.testing.assert_allclose(c @ c.T, np.eye(8), atol=1e-12)
    rng = np.random.default_rng(0)
    image = rng.uniform(-128, 127, size=(16, 24))
    back = video.dequantise(video.quantise(image, 1.0), 1.0)
    # the error per coefficient is at most half a quantisation step; orthonormal C keeps norms
    error = video._C @ video._blocks(image - back) @ video._C.T
    assert np.all(np.abs(error) <= video.JPEG_LUMA / 2 + 1e-9)


def test_motion_search_finds_a_known_shift():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 255, size=(32, 32))
    frame = np.roll(ref, shift=(2, -3), axis=(0, 1))      # content moved down 2, left 3
    vectors = video.motion_search(frame, ref, radius=4)
    inner = vectors[1:-1, 1:-1]                           # away from the wrapped edges
    assert np.all(inner[..., 0] == -2) and np.all(inner[..., 1] == 3)
    np.testing.assert_array_equal(video.predict(ref, vectors)[8:-8, 8:-8], frame[8:-8, 8:-8])


def test_encoding_decodes_to_the_video_within_the_quantisation_error():
    clip = video.synthetic_video(6, 32, 48, seed=3)
    encoded = video.encode_serial(clip, gop=4)
    assert [len(levels) for levels, _ in encoded] == [4, 2]
    decoded = video.decode(encoded)
    assert decoded.shape == clip.shape and decoded.dtype == np.uint8
    assert video.psnr(clip, decoded) > 30
    assert video.psnr(clip, clip) == float("inf")
    coarse = video.decode(video.encode_serial(clip, gop=4, scale=4.0), scale=4.0)
    assert video.psnr(clip, coarse) < video.psnr(clip, decoded)


def test_gop_parallel_encoding_equals_the_serial_encoding_bit_for_bit():
    clip = video.synthetic_video(10, 24, 32, seed=0)
    serial = video.encode_serial(clip, gop=3)
    with video.make_pool(2) as pool:
        parallel = video.encode_parallel(clip, gop=3, pool=pool)
    assert video.equal(parallel, serial)
    other = video.encode_serial(video.synthetic_video(10, 24, 32, seed=1), gop=3)
    assert not video.equal(other, serial)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="height, width multiples of 8"):
        video.synthetic_video(2, 20, 32)
    with pytest.raises(ValueError, match="at least one frame"):
        video.split_gops(np.zeros((2, 8, 8)), 0)

"""Video encoding, parallel over groups of pictures (task parallelism, chapter 6).

A toy codec with the structure of real ones (MPEG, H.264): the video is cut into
*groups of pictures* (GOPs) of ``G`` frames. In a GOP the first frame is coded on its
own (an *I-frame*), every other frame as its difference from a prediction made from
the previous frame *as the decoder will reconstruct it* (a *P-frame*). The prediction
is motion-compensated: for every 8×8 block, :func:`motion_search` tries every shift
``(dy, dx)`` with ``|dy|, |dx| ≤ radius`` of the previous frame and keeps the one with
the smallest sum of absolute differences — the expensive part of encoding, as in real
encoders. The residual is cut into 8×8 blocks, transformed with the orthonormal 2-D
DCT-II ``C · X · Cᵀ``,

    C[u, i] = α(u) · cos(π (2i + 1) u / 16),   α(0) = √(1/8), α(u>0) = √(2/8),

divided by the JPEG luminance quantisation table times ``scale`` and rounded to
integers (the only lossy step). A general-purpose compressor (zlib) stands in for the
entropy coder when sizes are measured.

Frames inside a GOP depend on each other, so they must be coded in order; different
GOPs share nothing. The GOP is therefore the unit of task parallelism: a process pool
encodes different GOPs at the same time, and the encoded video is the serial one, bit
for bit, because each GOP is computed by the same code on the same input.
"""

from __future__ import annotations

import zlib
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

BLOCK = 8
JPEG_LUMA = np.array([  # the JPEG standard's example luminance table (ITU-T T.81, Annex K)
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=float)


def dct_matrix(n: int = BLOCK) -> np.ndarray:
    """The orthonormal DCT-II matrix ``C`` (``C @ C.T`` is the identity)."""
    u, i = np.arange(n)[:, None], np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * u / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


_C = dct_matrix()


def synthetic_video(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A ``(frames, height, width)`` uint8 video: a drifting gradient, a moving square, noise.

    Deterministic for a given ``seed``; no file is read.
    """
    if height % BLOCK or width % BLOCK or min(frames, height, width) < 1:
        raise ValueError(f"need frames ≥ 1 and height, width multiples of {BLOCK}; "
                         f"got {frames}×{height}×{width}")
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    video = np.empty((frames, height, width), dtype=np.uint8)
    side = max(BLOCK, min(height, width) // 4)
    for t in range(frames):
        frame = 96 + 64 * np.sin(2 * np.pi * (x + 2 * t) / width) * np.cos(np.pi * y / height)
        top, left = (3 * t) % (height - side + 1), (5 * t) % (width - side + 1)
        frame[top:top + side, left:left + side] = 230
        frame += rng.normal(0, 4, size=frame.shape)
        video[t] = np.clip(np.rint(frame), 0, 255)
    return video


def _blocks(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    return image.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).swapaxes(1, 2)


def _image(blocks: np.ndarray) -> np.ndarray:
    hb, wb = blocks.shape[:2]
    return blocks.swapaxes(1, 2).reshape(hb * BLOCK, wb * BLOCK)


def quantise(image: np.ndarray, scale: float) -> np.ndarray:
    """Blockwise DCT of a float image, quantised: int16 ``(H/8, W/8, 8, 8)`` coefficients."""
    coefficients = _C @ _blocks(image) @ _C.T
    return np.rint(coefficients / (JPEG_LUMA * scale)).astype(np.int16)


def dequantise(levels: np.ndarray, scale: float) -> np.ndarray:
    """The inverse of :func:`quantise` up to its rounding: a float image."""
    return _image(_C.T @ (levels * (JPEG_LUMA * scale)) @ _C)


RADIUS = 4  # motion search range in pixels


def motion_search(frame: np.ndarray, ref: np.ndarray, radius: int = RADIUS) -> np.ndarray:
    """Best shift of ``ref`` for every 8×8 block of ``frame``: int8 ``(H/8, W/8, 2)``.

    Exhaustive search over ``(2·radius + 1)²`` shifts; ``ref`` is extended at its edges.
    Ties go to the shift tried first (``dy``, then ``dx``, from ``−radius``).
    """
    h, w = frame.shape
    padded = np.pad(ref, radius, mode="edge")
    best = np.full((h // BLOCK, w // BLOCK), np.inf)
    vectors = np.zeros((h // BLOCK, w // BLOCK, 2), dtype=np.int8)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
            sad = np.abs(frame - shifted).reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK)
            sad = sad.sum(axis=(1, 3))
            better = sad < best
            best[better] = sad[better]
            vectors[better] = (dy, dx)
    return vectors


def predict(ref: np.ndarray, vectors: np.ndarray, radius: int = RADIUS) -> np.ndarray:
    """The motion-compensated prediction: every block copied from ``ref`` at its shift."""
    hb, wb = vectors.shape[:2]
    padded = np.pad(ref, radius, mode="edge")
    i = np.arange(BLOCK)
    rows = (np.arange(hb)[:, None, None, None] * BLOCK + i[None, None, :, None]
            + vectors[:, :, 0, None, None] + radius)
    cols = (np.arange(wb)[None, :, None, None] * BLOCK + i[None, None, None, :]
            + vectors[:, :, 1, None, None] + radius)
    return _image(padded[rows, cols])


def encode_gop(frames: np.ndarray, scale: float = 1.0,
               radius: int = RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """Encode one GOP: int16 levels ``(G, H/8, W/8, 8, 8)`` and int8 motion vectors
    ``(G, H/8, W/8, 2)`` (zero for the I-frame).

    Frame 0 is coded as ``frame − 128`` (I-frame); frame ``t > 0`` as ``frame −
    predict(recon, vectors)``, where ``recon`` is frame ``t−1`` as the decoder
    reconstructs it (P-frame): the encoder runs the decoder too, so that rounding
    errors never accumulate.
    """
    _, h, w = frames.shape
    levels = np.empty((len(frames), h // BLOCK, w // BLOCK, BLOCK, BLOCK), dtype=np.int16)
    vectors = np.zeros((len(frames), h // BLOCK, w // BLOCK, 2), dtype=np.int8)
    recon = np.full((h, w), 128.0)
    for t, frame in enumerate(frames.astype(float)):
        if t > 0:
            vectors[t] = motion_search(frame, recon, radius)
            prediction = predict(recon, vectors[t], radius)
        else:
            prediction = recon
        levels[t] = quantise(frame - prediction, scale)
        recon = np.clip(prediction + dequantise(levels[t], scale), 0, 255)
    return levels, vectors


def decode_gop(encoded: tuple[np.ndarray, np.ndarray], scale: float = 1.0,
               radius: int = RADIUS) -> np.ndarray:
    """Decode one GOP back to uint8 frames."""
    levels, vectors = encoded
    recon = np.full((levels.shape[1] * BLOCK, levels.shape[2] * BLOCK), 128.0)
    frames = np.empty((len(levels), *recon.shape), dtype=np.uint8)
    for t in range(len(levels)):
        prediction = predict(recon, vectors[t], radius) if t > 0 else recon
        recon = np.clip(prediction + dequantise(levels[t], scale), 0, 255)
        frames[t] = np.rint(recon)
    return frames


def split_gops(video: np.ndarray, gop: int) -> list[np.ndarray]:
    """The video cut into GOPs of ``gop`` frames (the last one may be shorter)."""
    if gop < 1:
        raise ValueError(f"a GOP needs at least one frame, got gop={gop}")
    return [video[t:t + gop] for t in range(0, len(video), gop)]


Encoded = list  # one (levels, vectors) pair per GOP


def encode_serial(video: np.ndarray, gop: int, scale: float = 1.0) -> Encoded:
    """The reference: every GOP, one after the other, in this process."""
    return [encode_gop(part, scale) for part in split_gops(video, gop)]


def encode_parallel(video: np.ndarray, gop: int, pool: Executor,
                    scale: float = 1.0) -> Encoded:
    """Every GOP as a task of ``pool`` (e.g. :func:`make_pool`); results in GOP order."""
    parts = split_gops(video, gop)
    return list(pool.map(encode_gop, parts, [scale] * len(parts)))


def decode(encoded: Encoded, scale: float = 1.0) -> np.ndarray:
    """Decode every GOP and join the frames."""
    return np.concatenate([decode_gop(part, scale) for part in encoded])


def equal(a: Encoded, b: Encoded) -> bool:
    """True when two encodings hold the same levels and motion vectors, bit for bit."""
    return len(a) == len(b) and all(
        np.array_equal(la, lb) and np.array_equal(va, vb) for (la, va), (lb, vb) in zip(a, b))


def make_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` fresh processes (``spawn``), started and ready.

    A trivial task per worker is run at once, so that process start-up is paid here
    and not inside the first timed encoding.
    """
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    list(pool.map(dct_matrix, [BLOCK] * workers))
    return pool


def compressed_bytes(encoded: Encoded) -> int:
    """Bytes of levels and vectors after zlib (level 6): the stand-in for entropy coding."""
    return sum(len(zlib.compress(levels.tobytes(), 6)) + len(zlib.compress(vectors.tobytes(), 6))
               for levels, vectors in encoded)


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB: ``10·log10(255² / mean squared error)``."""
    mse = np.mean((original.astype(float) - decoded.astype(float)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))

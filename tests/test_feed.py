"""Batched model input (noisystudent.feed): same numbers as the per-image eval transform, batches decoded
at once or in slices on threads, rejects kept, the next batch prefetched in order."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from noisystudent.data.array import ArraySource
from noisystudent.data.streaming import IndexChunks, StreamSource
from noisystudent.errors import ImageDecodeError
from noisystudent.feed import EvalInput, decode_fit, prefetch
from noisystudent.transforms import create_transform

MEAN1, STD1 = [0.29], [0.35]
MEAN3, STD3 = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _images(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("src,size,chans", [(28, 28, 1), (40, 28, 1), (20, 32, 3), (37, 24, 3)])
def test_eval_input_matches_the_eval_transform(src, size, chans):
    """Same side, shrinking (area) and enlarging (linear): the batch path gives the per-image transform's floats."""
    mean, std = (MEAN1, STD1) if chans == 1 else (MEAN3, STD3)
    images = _images(6, src, src + 3, chans)
    tf = create_transform(size, chans, mean, std, None)
    inp = EvalInput(size, chans, mean, std)
    want = torch.stack([tf(im) for im in images])
    fitted = np.stack([inp.fit(im) for im in images])
    square = _images(3, src, src, chans)
    np.testing.assert_array_equal(inp.fit_batch(square), np.stack([inp.fit(im) for im in square]))
    got = inp.batch(torch.from_numpy(fitted))
    assert got.shape == want.shape == (6, chans, size, size)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(inp(images[0]), want[0], atol=1e-5)
    half = inp.batch(torch.from_numpy(fitted), dtype=torch.float16, channels_last=True)
    assert half.dtype == torch.float16 and half.is_contiguous(memory_format=torch.channels_last)


def test_array_source_batch_is_one_read_and_equals_the_per_image_path():
    images = _images(10, 28, 28, 1, seed=1)
    reader = IndexChunks(ArraySource(images[..., 0]), chunk_size=10)
    inputs = {"a": EvalInput(28, 1, MEAN1, STD1), "b": EvalInput(16, 1, MEAN1, STD1)}
    raws = [3, 1, 4, 1, 5]
    fast, ok, rej = decode_fit(reader, [f"i{r}" for r in raws], raws, inputs)
    assert ok == [0, 1, 2, 3, 4] and rej == []
    np.testing.assert_array_equal(fast["a"], images[raws])

    class PerImage:  # the same reader without its batch path
        decode = staticmethod(reader.decode)

    slow, ok2, _ = decode_fit(PerImage(), [f"i{r}" for r in raws], raws, inputs)
    assert ok2 == ok
    for k in inputs:
        np.testing.assert_array_equal(fast[k], slow[k])


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("threads", [1, 3])
def test_encoded_batch_in_slices_keeps_order_and_rejects(tmp_path, threads):
    """PNG bytes of different sizes, two of them corrupt: slices on threads give the serial result."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (20 + 3 * k, 30, 3), dtype=np.uint8) for k in range(9)]
    blobs = [_png(im) for im in imgs]
    blobs[2], blobs[7] = b"not a png", b""
    ids = [f"p{k}" for k in range(9)]
    pq.write_table(pa.table({"image_id": ids, "image": blobs}), tmp_path / "a.parquet")
    src = StreamSource("parquet_bytes", tmp_path / "a.parquet", in_chans=3)
    inputs = {"m": EvalInput(24, 3, MEAN3, STD3)}
    with ThreadPoolExecutor(threads) as pool:
        out, ok, rej = decode_fit(src, ids, blobs, inputs, pool if threads > 1 else None, threads)
    assert ok == [0, 1, 3, 4, 5, 6, 8]
    assert [r[0] for r in rej] == ["p2", "p7"] and all(r[1] for r in rej)
    want = np.stack([inputs["m"].fit(imgs[k]) for k in ok])
    np.testing.assert_array_equal(out["m"], want)


def test_prefetch_keeps_order_and_raises_at_the_failing_item():
    assert list(prefetch(range(7), lambda i: i * i)) == [i * i for i in range(7)]

    def prep(i):
        if i == 3:
            raise ImageDecodeError("x", "broken")
        return i

    got = []
    with pytest.raises(ImageDecodeError):
        for v in prefetch(range(6), prep):
            got.append(v)
    assert got == [0, 1, 2]
    # a consumer that stops early does not hang the producer
    for v in prefetch(range(1000), lambda i: i):
        if v == 2:
            break


def test_jpeg_bytes_decoded_by_torchvision_match_the_pil_path(tmp_path):
    """The device decode path (run here on the CPU): JPEGs by torchvision, a PNG and a corrupt JPEG through
    the source's decoder; pixels close to the host path's (another resize, the same decoder library)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from noisystudent.feed import decode_jpeg_batch

    rng = np.random.default_rng(4)
    imgs = []
    for k in range(5):
        low = rng.integers(0, 256, (5, 5, 3)).astype(np.uint8)
        imgs.append(np.asarray(Image.fromarray(low).resize((40 + 8 * k, 36), Image.BICUBIC)))
    blobs = []
    for k, im in enumerate(imgs):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG" if k == 3 else "JPEG", quality=95)
        blobs.append(buf.getvalue())
    blobs.append(blobs[0][:40])  # a truncated JPEG
    ids = [f"j{k}" for k in range(len(blobs))]
    pq.write_table(pa.table({"image_id": ids, "image": blobs}), tmp_path / "j.parquet")
    src = StreamSource("parquet_bytes", tmp_path / "j.parquet", in_chans=3)
    inputs = {"m": EvalInput(24, 3, MEAN3, STD3)}
    dev, ok, rej = decode_jpeg_batch(src, ids, blobs, inputs, torch.device("cpu"))
    host, ok_h, rej_h = decode_fit(src, ids, blobs, inputs)
    assert ok == ok_h == [0, 1, 2, 3, 4] and [r[0] for r in rej] == [r[0] for r in rej_h] == ["j5"]
    diff = np.abs(dev["m"].numpy().astype(int) - host["m"].astype(int))
    assert dev["m"].shape == (5, 24, 24, 3) and diff.mean() < 4, diff.mean()

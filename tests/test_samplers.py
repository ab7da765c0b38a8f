"""The training loaders: ShuffleSampler (DistributedSampler's sharding, RandomSampler's fresh order per pass) and the datasets' batched fetch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from noisystudent.data.samplers import ShuffleSampler
from noisystudent.data.torch_dataset import RepeatedDataset


def test_each_pass_is_a_new_permutation_and_an_epoch_replays_exactly():
    s = ShuffleSampler(100, seed=7)
    first, second = list(s), list(s)
    assert sorted(first) == list(range(100)) and sorted(second) == list(range(100))
    assert first != second, "a loader cycled twice in an epoch must not repeat its order"
    s.set_epoch(1)
    third = list(s)
    assert third not in (first, second)
    s.set_epoch(0)  # a resumed run replays the epoch's passes
    assert list(s) == first and list(s) == second
    assert list(ShuffleSampler(100, seed=7)) == first  # a function of (seed, epoch, pass) alone
    assert list(ShuffleSampler(100, seed=8)) != first


@pytest.mark.parametrize("n,world", [(100, 4), (10, 3), (2, 4), (1, 1)])
def test_ranks_split_one_permutation_into_equal_shares_as_distributed_sampler_does(n, world):
    shares = [list(ShuffleSampler(n, seed=1, rank=r, world_size=world)) for r in range(world)]
    size = -(-n // world)
    assert all(len(sh) == size == len(ShuffleSampler(n, rank=r, world_size=world)) for r, sh in enumerate(shares))
    flat = [i for sh in shares for i in sh]
    assert set(flat) == set(range(n)) and len(flat) == size * world  # every image, padding only to equal length
    whole = ShuffleSampler(n, seed=1).permutation().tolist()
    assert shares[0] == [whole[k % n] for k in range(0, size * world, world)]


def test_invalid_rank_is_refused():
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        ShuffleSampler(10, rank=2, world_size=2)


def test_the_permutation_is_one_compact_tensor():
    assert ShuffleSampler(1000).permutation().dtype == torch.int32
    assert ShuffleSampler(2**31).n == 2**31  # int64 past 2^31 (not drawn here: 16 GiB)


def test_engine_loaders_use_it_over_repeated_pseudo_labels():
    from noisystudent.engine import make_loader

    base = torch.utils.data.TensorDataset(torch.arange(5))
    ds = RepeatedDataset(base, [1, 3, 0, 1, 2])  # 7 positions, item 1 three times, item 2 never
    dl = make_loader(ds, batch_size=2, num_workers=0, seed=0)
    assert isinstance(dl.sampler, ShuffleSampler)
    seen = sorted(int(x) for (b,) in dl for x in b)
    assert len(seen) == 6 and set(seen) <= {0, 1, 3, 4}  # drop_last: 3 full batches of the 7 positions
    dl.sampler.set_epoch(0)
    everything = sorted(int(ds[i][0]) for i in dl.sampler)
    assert everything == [0, 1, 1, 1, 3, 4, 4]


def _batches(ds, batch_size=5):
    from noisystudent.engine.loaders import make_loader

    return list(make_loader(ds, batch_size, 0, seed=3))


def test_batched_fetch_gives_what_the_per_image_path_gives():
    """``__getitems__`` (array source + a batch transform): one fancy index per batch, the same tensors, targets
    and indices as one ``__getitem__`` per image collated, for every kind of target and through the duplicates."""
    from noisystudent.batch_noise import ToUint8
    from noisystudent.data.array import ArraySource
    from noisystudent.data.torch_dataset import Collated, SourceDataset, TopKTargets

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 23)
    probs = rng.random((23, 10)).astype(np.float32)
    classes = np.argsort(-probs, 1)[:, :3].astype(np.int32)
    classes[4, 2] = -1  # a padding entry
    top = np.take_along_axis(probs, classes.clip(0), 1)
    tf = ToUint8(8, 1, [0.5], [0.5])
    weights = rng.integers(0, 3, 23)
    for targets in (None, labels, probs, TopKTargets(classes, top, 10), TopKTargets(classes, top, 10, hard=True)):
        ds = SourceDataset(ArraySource(images, labels=labels, classes=[str(c) for c in range(10)]), tf, targets=targets)
        assert isinstance(ds.__getitems__([0, 5, 2]), Collated)
        for wrapped in (ds, RepeatedDataset(ds, weights)):
            per_image = type("PerImage", (), {"__len__": lambda s: len(wrapped), "__getitem__": lambda s, j: wrapped[j]})()
            for a, b in zip(_batches(wrapped), _batches(per_image)):
                for x, y in zip(a, b):
                    assert x.dtype == y.dtype and x.shape == y.shape
                    torch.testing.assert_close(x, y)


def test_batched_fetch_falls_back_without_a_batch_path():
    """A transform without ``batch`` (albumentations noise) keeps the per-image items, so an unreadable image is
    still skipped one by one."""
    from noisystudent.data.array import ArraySource
    from noisystudent.data.torch_dataset import SourceDataset

    ds = SourceDataset(ArraySource(np.zeros((4, 8, 8), np.uint8), labels=np.arange(4), classes=list("abcd")), lambda im: torch.zeros(1, 8, 8))
    items = ds.__getitems__([1, 3])
    assert isinstance(items, list) and [i for _, _, i in items] == [1, 3]

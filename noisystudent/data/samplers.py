"""The training loaders' shuffling sampler: a permutation in 4 or 8 bytes an image, sharded across DDP ranks.

Why not torch's ``RandomSampler``: it draws ``torch.randperm(n).tolist()``, a Python ``int`` object per
image (42-49 bytes a row measured here, so 4-5 GB per process at 10^8 pseudo-labeled images), and Ray
Train's ``prepare_data_loader`` replaces it with a ``DistributedSampler`` that builds the same list of
*all* ``n`` indices on every worker before keeping its share. This one keeps the epoch's permutation as
one int32 tensor (int64 past 2^31 images), takes the rank's share as a strided view and turns one index
at a time into an ``int`` as the loader asks for it.

Semantics are ``DistributedSampler``'s (with ``drop_last=False``): a permutation is a function of
``(seed, epoch, pass)`` alone, so every rank draws the same one and keeps every ``world_size``-th entry
from its rank on; the shares are padded with the permutation's first entries to equal length, so every
rank runs the same number of steps. The loop calls :meth:`set_epoch` before each epoch; a loader cycled
through more than once in an epoch (a small labeled set beside many pseudo-labels) gets a new order on
each pass, as ``RandomSampler`` gives, where a ``DistributedSampler`` repeats the epoch's order.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ShuffleSampler(Sampler[int]):
    """Shuffled indices ``0..n-1`` of a data set, this rank's share of them, a new order every epoch."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.n, self.seed, self.rank, self.world_size = int(n), int(seed), int(rank), int(world_size)
        self.epoch = 0
        self.passes = 0  # iterations begun in this epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.passes = int(epoch), 0

    def __len__(self) -> int:
        return -(-self.n // self.world_size)  # ceil: the padded share

    def permutation(self, passes: int = 0) -> torch.Tensor:
        """The permutation of all ``n`` indices for pass ``passes`` of this epoch (the same on every rank)."""
        g = torch.Generator()
        g.manual_seed(hash((self.seed, self.epoch, passes)) & (2**63 - 1))  # int tuples hash alike in every process
        dtype = torch.int32 if self.n < 2**31 else torch.int64
        return torch.randperm(self.n, generator=g, dtype=dtype)

    def __iter__(self) -> Iterator[int]:
        if self.n == 0:
            return
        perm = self.permutation(self.passes)
        self.passes += 1
        share = len(self)
        pad = share * self.world_size - self.n
        if pad:  # at most world_size - 1 entries, repeated from the head as DistributedSampler does
            perm = torch.cat([perm, perm[:pad].repeat(-(-pad // self.n))[:pad]])
        for i in perm[self.rank :: self.world_size].numpy():  # a strided view; one int at a time
            yield int(i)

"""A training data loader whose stream is a pure function of (seed, position).

detectron2's ``--resume`` restores model, optimizer, scheduler and iteration, but not the data
sampler's position nor the random state of augmentations running in worker processes, so a resumed
run sees different batches than an uninterrupted one. Here:

- the stream is an endless sequence of positions 0, 1, 2, ...; position ``p`` maps to a dataset
  index through a per-epoch permutation drawn from ``seed`` (RepeatFactorTrainingSampler's
  stochastic repeats included), and rank ``r`` of ``w`` takes positions ``r, r+w, ...``;
- augmentation randomness for position ``p`` is seeded from (seed, p), so it does not depend on
  which worker maps it or on what ran before;
- batches (aspect-ratio grouped like detectron2's) are cut in the main process, so the batch
  produced at iteration ``i`` is reproduced by replaying the cheap index arithmetic for ``i``
  batches: resuming at iteration ``i`` needs nothing but ``i`` and the seed.
"""

import logging
import random

import numpy as np
import torch
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.utils import comm

logger = logging.getLogger(__name__)

_MAX_RETRIES = 10


def _mix(seed, *values):
    """A 32-bit seed from several non-negative integers (numpy's SeedSequence does the mixing)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, *values]).generate_state(1, np.uint32)[0])


class TrainingStream(torch.utils.data.Dataset):
    """Map-style dataset indexed by stream position; ``stream[p]`` is the mapped sample at ``p``."""

    def __init__(self, dataset_dicts, mapper, seed, repeat_factors=None):
        self.dataset_dicts = dataset_dicts
        self.mapper = mapper
        self.seed = int(seed)
        self.repeat_factors = repeat_factors
        self._epochs = []  # index arrays, one per epoch, computed on demand
        self._starts = [0]  # first position of each epoch

    def __len__(self):
        return len(self.dataset_dicts)

    def _epoch_indices(self, epoch):
        g = torch.Generator().manual_seed(_mix(self.seed, epoch))
        if self.repeat_factors is None:
            return torch.randperm(len(self.dataset_dicts), generator=g).numpy()
        # Same stochastic rounding as detectron2's RepeatFactorTrainingSampler, then shuffled.
        sampler = RepeatFactorTrainingSampler(self.repeat_factors, shuffle=False, seed=0)
        indices = sampler._get_epoch_indices(g)
        return indices[torch.randperm(len(indices), generator=g)].numpy()

    def index_of(self, position):
        while position >= self._starts[-1]:
            indices = self._epoch_indices(len(self._epochs))
            self._epochs.append(indices)
            self._starts.append(self._starts[-1] + len(indices))
        epoch = int(np.searchsorted(self._starts, position, side="right")) - 1
        return int(self._epochs[epoch][position - self._starts[epoch]])

    def __getitem__(self, position):
        index = self.index_of(position)
        for attempt in range(_MAX_RETRIES):
            data = self._map_seeded(self.dataset_dicts[index], _mix(self.seed, position, attempt))
            if data is not None:
                return data
            # The mapper rejected the sample (e.g. nothing left after cropping): take a
            # deterministic neighbour, as detectron2's MapDataset takes a random one.
            index = (index + 1) % len(self.dataset_dicts)
        raise RuntimeError(f"Failed to map a training sample after {_MAX_RETRIES} attempts (position {position}).")

    def _map_seeded(self, dataset_dict, seed):
        # Save and restore the global RNGs: with num_workers=0 this runs in the training process,
        # whose RNG stream (RPN/ROI sampling) must not depend on data loading.
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            return self.mapper(dict(dataset_dict))
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Endless batches of stream positions for this rank, grouped by aspect ratio (w > h or not)."""

    def __init__(self, stream, batch_size, *, rank=0, world_size=1, group_by_aspect=True, start_batch=0):
        self.stream = stream
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.group_by_aspect = group_by_aspect
        self.start_batch = start_batch
        dicts = stream.dataset_dicts
        self._groups = [int(d.get("width", 1) > d.get("height", 1)) if group_by_aspect else 0 for d in dicts]

    def __iter__(self):
        buckets = {0: [], 1: []}
        position = self.rank
        produced = 0
        while True:
            group = self._groups[self.stream.index_of(position)]
            buckets[group].append(position)
            position += self.world_size
            if len(buckets[group]) == self.batch_size:
                batch, buckets[group] = buckets[group], []
                if produced >= self.start_batch:
                    yield batch
                produced += 1

    def __len__(self):  # endless; DataLoader only needs this for len(loader)
        raise TypeError("ResumableBatchSampler is endless")


def build_resumable_train_loader(cfg, dataset_dicts, mapper, seed):
    """(DataLoader, batch sampler) for ``dataset_dicts``; set ``sampler.start_batch`` before iterating."""
    world_size = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of processes ({world_size}).")
    sampler_name = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler_name == "TrainingSampler":
        repeat_factors = None
    elif sampler_name == "RepeatFactorTrainingSampler":
        repeat_factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
        )
    else:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN {sampler_name!r} is not supported (TrainingSampler, RepeatFactorTrainingSampler).")
    stream = TrainingStream(dataset_dicts, mapper, seed, repeat_factors)
    batch_sampler = ResumableBatchSampler(
        stream,
        total // world_size,
        rank=comm.get_rank(),
        world_size=world_size,
        group_by_aspect=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
    )
    loader = torch.utils.data.DataLoader(
        stream,
        batch_sampler=batch_sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed,
        # Its own generator: creating the iterator must not consume the global torch RNG.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0,
    )
    return loader, batch_sampler

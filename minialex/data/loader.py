r"""Mini-batches: shuffled index order, a background thread that prefetches, device transforms.

A :class:`Loader` walks a *dataset* (anything with ``len(ds)`` and ``ds.get_batch(indices) ->
(images, labels)`` as host arrays, e.g. :class:`ArrayDataset`) in mini-batches:

1. at the start of each epoch it draws the order, a permutation from its ``generator`` when
   ``shuffle`` (so every sample is seen exactly once per epoch), else ``0 .. N-1``;
2. a background thread gathers the next batches on the host and copies them to ``device``
   while the caller computes on the current one (``prefetch`` batches ahead; ``prefetch=0``
   loads in the caller's thread);
3. in the caller's thread, in batch order, ``transform(images)`` runs on the device (scaling,
   augmentation: see :mod:`minialex.data.transforms` and :mod:`minialex.data.augment`). Random
   transforms draw from their generators here rather than in the thread, so the draws do not
   depend on thread timing and a generator's state after batch ``k`` is the same every run.

**Resuming.** The loader owns the random state of what it yields. ``state_dict()`` holds

- ``"shuffle"``: the shuffle generator's state *before the current epoch's order was drawn*
  while an epoch is in progress (``epoch()`` was called and its iterator has not run to its
  end, even if it was closed early), else its current state; None without a generator;
- ``"transform"``: the transform's random state as it is now, ``transform.state_dict()``
  (for a bound method such as ``augmenter.train``, its object's); None if it has none.

Both are plain data (JSON-able). After ``load_state_dict`` of a state saved when ``k`` batches of
an epoch had been yielded, ``epoch(start=k)`` draws the same order, skips the first ``k`` batches
without loading them, and yields exactly the batches (order and augmentation) the uninterrupted
epoch would have yielded; the epochs after it match too. The shuffle generator and a random
transform must not share one ``numpy.random.Generator`` (their states are saved at different
moments).

**Several processes** (data parallel training, :mod:`minialex.distributed`). With
``num_replicas`` R > 1 and ``rank`` r, ``batch_size`` is still the *global* batch (it must
divide by R) and each process gets its share of it (:mod:`minialex.data.shards`):

- ``shard_by="batch"`` (training): every process draws the same order from its own generator
  (seeded alike, so every process's state stays the same), cuts it into the global batches one
  process would use, and keeps the contiguous rows ``[r*b, (r+1)*b)`` of each, ``b = batch_size
  / R``. Random transforms draw for the whole global batch and keep this share's draws, so
  every sample is cropped, flipped and coloured as in a one-process run. Every process has
  ``len(loader)`` batches, the number of global batches; the last one, when smaller, is split
  as evenly as possible. A last batch with fewer samples than processes is refused (unless
  ``drop_last``): a process would have no sample to train on.
- ``shard_by="dataset"`` (evaluation): process r takes the contiguous share
  ``[r*N/R, (r+1)*N/R)`` of the epoch's order and walks it in batches of ``b``; the shares'
  sums add up to the one-process sums. Shares may differ by one sample, and so their numbers of
  batches by one (``drop_last`` is refused: it would cut each share's own tail).

>>> ds = ArrayDataset(np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1), np.arange(10))
>>> loader = Loader(ds, batch_size=4, shuffle=True, generator=np.random.default_rng(0))
>>> [labels.tolist() for _, labels in loader]
[[4, 6, 2, 7], [3, 5, 9, 0], [8, 1]]
>>> second = Loader(ds, batch_size=4, shuffle=True, generator=np.random.default_rng(0),
...                 num_replicas=2, rank=1)
>>> [labels.tolist() for _, labels in second]
[[2, 7], [9, 0], [1]]
"""
from __future__ import annotations

import contextlib
import copy
import queue
import threading

import numpy as np

from .. import backend
from ..checks import is_int, non_negative_int, positive_int
from .shards import batch_share, share_bounds

SHARD_BY = ("batch", "dataset")


class ArrayDataset:
    """Images (N, C, H, W) and labels (N,) held in host memory."""

    def __init__(self, images, labels):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4:
            raise ValueError(f"ArrayDataset: expected images of shape (N, C, H, W), got "
                             f"{images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"ArrayDataset: expected labels of shape ({images.shape[0]},) to "
                             f"match the images, got {labels.shape}")
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __repr__(self):
        return f"ArrayDataset({len(self)} images of {self.images.shape[1:]} {self.images.dtype})"

    def get_batch(self, indices):
        return self.images[indices], self.labels[indices]

    def head(self, n):
        """The first ``n`` samples (all when ``n`` is None or at least the size)."""
        if n is None or n >= len(self):
            return self
        return ArrayDataset(self.images[:n], self.labels[:n])


class Loader:
    """Mini-batches of ``dataset`` as ``(images, labels)`` arrays on ``device``.

    Args:
        dataset: ``len(dataset)`` and ``dataset.get_batch(indices) -> (images, labels)``.
        batch_size: samples per batch; the last batch is smaller unless ``drop_last``.
        shuffle: draw a new permutation from ``generator`` every epoch.
        generator: a ``numpy.random.Generator``, required when shuffling: the order is then
            reproducible and saved by :meth:`state_dict`, and it does not consume draws from
            minialex's CPU stream (that dropout and augmentation use).
        transform: ``transform(images) -> images`` applied on the device, in the caller's thread.
        device: ``"cpu"`` or ``"gpu[:N]"``; batches are copied there by the loading thread.
        prefetch: batches loaded ahead by the background thread (0: no thread).
        num_classes: when given, every batch's labels are checked to lie in [0, num_classes)
            on the host, before the copy, so the loss need not read them back from the device.
        num_replicas, rank: this is process ``rank`` of ``num_replicas`` sharing the data
            (``batch_size`` stays the global batch); see the module docstring.
        shard_by: ``"batch"`` (training: a share of every global batch) or ``"dataset"``
            (evaluation: a contiguous share of the samples).
    """

    def __init__(self, dataset, batch_size, *, shuffle=False, generator=None, transform=None,
                 device="cpu", drop_last=False, prefetch=2, num_classes=None, num_replicas=1,
                 rank=0, shard_by="batch"):
        batch_size = positive_int("Loader", "batch_size", batch_size)
        num_replicas = positive_int("Loader", "num_replicas", num_replicas)
        if not is_int(rank) or not 0 <= rank < num_replicas:
            raise ValueError(f"Loader: rank must be an int in 0..{num_replicas - 1} (num_replicas "
                             f"is {num_replicas}), got {rank!r}")
        if batch_size % num_replicas:
            raise ValueError(f"Loader: the global batch_size {batch_size} does not divide by the "
                             f"{num_replicas} processes (num_replicas) sharing it")
        if shard_by not in SHARD_BY:
            raise ValueError(f"Loader: shard_by must be one of {SHARD_BY}, got {shard_by!r}")
        if num_replicas > 1 and shard_by == "dataset" and drop_last:
            raise ValueError("Loader: drop_last=True with shard_by='dataset' would drop a "
                             "different tail from each process's share, so the shares' sums "
                             "would not add up to the dataset's; use drop_last=False")
        last = len(dataset) % batch_size
        if num_replicas > 1 and shard_by == "batch" and not drop_last and 0 < last < num_replicas:
            raise ValueError(f"Loader: the last batch holds {last} sample(s) ({len(dataset)} "
                             f"samples in batches of {batch_size}), fewer than the "
                             f"{num_replicas} processes (num_replicas) sharing it, so a process "
                             f"would train on none; use drop_last=True, or a dataset size or "
                             f"batch_size that leaves at least {num_replicas}")
        if shuffle and not isinstance(generator, np.random.Generator):
            raise ValueError(f"Loader: shuffle=True needs a numpy.random.Generator as generator, "
                             f"got {type(generator).__name__}")
        self.prefetch = non_negative_int("Loader", "prefetch", prefetch)
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.generator, self.transform = shuffle, generator, transform
        self.device, self.drop_last = device, drop_last
        self.num_classes = (None if num_classes is None
                            else positive_int("Loader", "num_classes", num_classes))
        self.num_replicas, self.rank, self.shard_by = num_replicas, int(rank), shard_by
        self._open = None    # (token, shuffle state before its order) of the epoch in progress

    def __len__(self):
        """Batches per epoch: the global batches (``shard_by="batch"``), or this process's
        batches of its share (``"dataset"``)."""
        if self.shard_by == "batch":
            return self._batches_of(len(self.dataset), self.batch_size)
        start, stop = share_bounds(len(self.dataset), self.rank, self.num_replicas)
        return self._batches_of(stop - start, self.batch_size // self.num_replicas)

    def _batches_of(self, n, size):
        return n // size if self.drop_last else -(-n // size)

    def __iter__(self):
        return self.epoch()

    def order(self) -> np.ndarray:
        """This epoch's sample order (draws from the generator when shuffling)."""
        n = len(self.dataset)
        return self.generator.permutation(n) if self.shuffle else np.arange(n)

    def epoch(self, start: int = 0):
        """An iterator over one epoch's batches, skipping the first ``start`` of them.

        The order is drawn here, when the epoch is asked for, not at the first ``next``.
        """
        token = object()
        self._open = (token, self._shuffle_state())
        order = self.order()
        if self.shard_by == "dataset":
            first, last = share_bounds(len(order), self.rank, self.num_replicas)
            order, size = order[first:last], self.batch_size // self.num_replicas
            batches = [order[i * size:(i + 1) * size] for i in range(start, len(self))]
            return self._transformed(batches, [None] * len(batches), token)
        batches, shares = [], []
        for i in range(start, len(self)):
            batch = order[i * self.batch_size:(i + 1) * self.batch_size]
            first, last = share_bounds(len(batch), self.rank, self.num_replicas)
            batches.append(batch[first:last])
            shares.append((first, last, len(batch)) if self.num_replicas > 1 else None)
        return self._transformed(batches, shares, token)

    def state_dict(self) -> dict:
        """The shuffle and transform states that resume this loader exactly (module docstring)."""
        shuffle = self._open[1] if self._open else self._shuffle_state()
        stateful = _stateful(self.transform)
        return {"shuffle": copy.deepcopy(shuffle),
                "transform": None if stateful is None else stateful.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; the next :meth:`epoch` draws the saved epoch's order."""
        shuffle, transform = state["shuffle"], state["transform"]
        stateful = _stateful(self.transform)
        if (shuffle is None) != (self.generator is None):
            raise ValueError(f"Loader: the state {'has no' if shuffle is None else 'has a'} "
                             f"shuffle state but this loader's generator is {self.generator!r}")
        if (transform is None) != (stateful is None):
            raise ValueError(f"Loader: the state {'has no' if transform is None else 'has a'} "
                             f"transform state but this loader's transform is "
                             f"{self.transform!r}")
        if stateful is not None:
            stateful.load_state_dict(transform)
        if shuffle is not None:
            self.generator.bit_generator.state = shuffle
        self._open = None

    def _shuffle_state(self):
        return None if self.generator is None else self.generator.bit_generator.state

    def _transformed(self, batches, shares, token):
        """``shares``: per batch, (first, last, global size) of this process's rows, whose
        random draws are made for the whole global batch; or None."""
        source = self._threaded(batches) if self.prefetch else map(self._fetch, batches)
        try:
            for (images, labels), share in zip(source, shares):
                if self.transform is not None:
                    # transforms allocate on the batch's device, and draw for the global batch
                    with backend.device_scope(images), \
                            (batch_share(*share) if share else contextlib.nullcontext()):
                        images = self.transform(images)
                yield images, labels
            if self._open is not None and self._open[0] is token:
                self._open = None          # this epoch ran to its end
        finally:
            if hasattr(source, "close"):
                source.close()  # stops the loading thread when the caller leaves early

    def _fetch(self, indices):
        images, labels = self.dataset.get_batch(indices)
        if self.num_classes is not None and len(labels):
            labels = np.asarray(labels)
            low, high = labels.min(), labels.max()
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"Loader: label {low if low < 0 else high} is out of range "
                                 f"[0, {self.num_classes}) (num_classes={self.num_classes})")
        if self.device != "cpu":
            images = backend.to_device(images, self.device)
            labels = backend.to_device(labels, self.device)
        return images, labels

    def _threaded(self, batches):
        """Yield ``_fetch(b)`` for each batch, computed ``prefetch`` ahead by a daemon thread."""
        ready, stop = queue.Queue(maxsize=self.prefetch), threading.Event()
        done = object()

        def put(item):
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for indices in batches:
                    if not put(self._fetch(indices)):
                        return
            except BaseException as exc:  # handed to the caller, who re-raises it
                put(_Failure(exc))
                return
            put(done)

        thread = threading.Thread(target=work, name="minialex-loader", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is done:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            stop.set()
            thread.join()


def _stateful(transform):
    """What holds ``transform``'s random state: itself, or a bound method's object."""
    for candidate in (transform, getattr(transform, "__self__", None)):
        if candidate is not None and hasattr(candidate, "state_dict"):
            return candidate
    return None


class _Failure:
    """An exception raised in the loading thread, carried to the caller."""

    def __init__(self, exc):
        self.exc = exc

r"""Data parallel training: one model replica per process, gradients averaged between them.

Each of ``size`` processes (started by ``mpiexec -n SIZE python -m mpi4py script.py``) holds the
whole model, computes the loss on its own share of every global batch (:class:`~minialex.data.
loader.Loader` with ``num_replicas``/``rank``), and, between ``loss.backward()`` and
``optimizer.step()``, replaces its gradients by their mean over the processes. With ``B`` the
global batch and process ``r`` holding ``B_r`` of its samples (``B_r = B / size`` for every full
batch), the one-process gradient of the batch's mean loss is

.. math::  g = \frac{1}{B} \sum_{i=1}^{B} \nabla \ell_i
             = \sum_r \frac{B_r}{B}\, g_r, \qquad
           g_r = \frac{1}{B_r} \sum_{i \in r} \nabla \ell_i ,

which for equal shares is the plain mean :math:`\frac{1}{size} \sum_r g_r` (Goyal et al. 2017,
"Accurate, Large Minibatch SGD", Sec. 3; ChainerMN's ``pure_nccl`` communicator). Every process
then takes the same SGD step from the same weights, so the replicas stay identical bit for bit,
and the run follows the one-process run to float rounding (the sum is taken in another order).

**Packing.** All gradients of one dtype are copied into one preallocated flat buffer, summed by
*one* all-reduce in place, scaled, and copied back: one call of a few hundred megabytes
instead of one per parameter (16 for AlexNet), whose per-call latency would add up. The model
broadcast at start (rank 0's weights to every process) packs the same way.

**Backends** (:func:`create_communicator`):

- :class:`SingleProcess` (size 1, the default): every exchange is a no-op; nothing imports
  mpi4py.
- :class:`MpiCommunicator`: mpi4py's buffer-based ``Allreduce(MPI.IN_PLACE, buffer)`` on NumPy
  arrays (the CPU); a GPU buffer is staged through the host.
- :class:`NcclCommunicator`: NCCL through ``cupy.cuda.nccl`` on CuPy arrays, one GPU per process
  (chosen by the process's *local rank*, its rank among the processes of its machine, found with
  MPI's ``COMM_TYPE_SHARED`` split: :func:`gpu_for`); MPI only starts it (rank 0's NCCL unique id
  is broadcast over MPI) and carries the small host-side sums.

**In the training loop** (:class:`DataParallel`, an extension of
:class:`~minialex.train.Trainer`): the gradients are averaged after the backward pass, weighted
by each process's samples; every process stops together on Ctrl-C; the checkpoint keeps every
process's dropout stream, so a run resumed on as many processes continues bit for bit.

**Failure.** A collective waits for every process: one that raises, and never reaches the next
all-reduce, leaves the others waiting for ever. Start scripts as ``python -m mpi4py script.py``
(mpi4py then calls ``MPI_Abort`` on an uncaught exception, and ``mpiexec`` ends every process),
or wrap the work in :meth:`Communicator.abort_on_error`. A process killed outright is noticed by
``mpiexec``, which ends the others.

>>> comm = create_communicator(None)
>>> comm.rank, comm.size, comm.local_rank
(0, 1, 0)
>>> comm.allreduce_sum([3.0, 4.0])
array([3., 4.])
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

import numpy as np

from . import backend
from .extensions import SAVE, Extension

KINDS = ("auto", "single", "mpi", "nccl")
ABORT_GRACE_SECONDS = 0.5     # for the aborting line to reach mpiexec before the job ends
# what an MPI launcher puts in each process's environment: MPICH/Intel MPI, Open MPI, MVAPICH
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_size() -> int:
    """The number of processes an MPI launcher started this one among (1 when none did), read
    from the environment without starting MPI."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def communicator_for(data_parallel: bool, device="cpu") -> "Communicator":
    """A run's communicator: MPI or NCCL (:func:`create_communicator` ``"auto"``) when
    ``data_parallel``, else one process, which an MPI launcher must not have started several
    of (each would train a model of its own, in one folder)."""
    size = launched_size()
    if size > 1 and not data_parallel:
        raise ValueError(f"this is one of {size} processes an MPI launcher started: set "
                         f"`data_parallel` to train one model together, or start one process")
    try:
        return create_communicator("auto" if data_parallel else None, device)
    except ImportError as exc:
        raise RuntimeError(f"`data_parallel` needs mpi4py and an MPI (pip install mpi4py "
                           f"mpich, or minialex's [mpi] extra): {exc}") from None


def create_communicator(kind="auto", device="cpu") -> "Communicator":
    """The communicator for ``kind``:

    - ``None`` or ``"single"``: one process, no exchange (:class:`SingleProcess`);
    - ``"mpi"``: MPI over mpi4py (:class:`MpiCommunicator`), any device;
    - ``"nccl"``: NCCL over CuPy, one GPU per process (:class:`NcclCommunicator`);
    - ``"auto"``: single unless an MPI launcher started more than one process, then NCCL when
      ``device`` is a GPU and MPI otherwise.
    """
    if kind is None:
        kind = "single"
    if kind not in KINDS:
        raise ValueError(f"create_communicator: kind must be one of {KINDS} or None, got "
                         f"{kind!r}")
    if kind == "auto":
        if launched_size() == 1:
            kind = "single"
        else:
            kind = "mpi" if backend.parse_device(device) == "cpu" else "nccl"
    return {"single": SingleProcess, "mpi": MpiCommunicator, "nccl": NcclCommunicator}[kind]()


class Communicator:
    """What every backend offers; this base class is the single process (size 1).

    Attributes:
        rank: this process's index, ``0 .. size-1``; rank 0 writes files and prints.
        size: the number of processes.
        local_rank: this process's index among those of its machine (its GPU under NCCL).
        local_size: the number of processes on this process's machine.
        device: where this process computes (``"cpu"``, or ``"gpu:LOCAL_RANK"`` under NCCL).
    """

    rank, size, local_rank, local_size, device = 0, 1, 0, 1, "cpu"
    name = "single"

    def __init__(self):
        self._buffers = {}   # (device, dtype, purpose, layout) -> a packer, kept between calls

    def __repr__(self):
        return (f"{type(self).__name__}(rank={self.rank}, size={self.size}, "
                f"local_rank={self.local_rank})")

    # -- the model and its gradients ------------------------------------------------------
    def broadcast_model(self, model, root: int = 0) -> None:
        """Overwrite every parameter of ``model`` with process ``root``'s, in place, so every
        replica starts from the same weights (the state_dict's arrays: minialex modules keep
        all their state in parameters)."""
        self._check_root(root)
        params = [p for _, p in model.named_parameters()]
        if self.size == 1:
            return
        arrays = [p.data for p in params]
        # once per run: its buffer (the whole model) is not kept, unlike the gradients'
        for packer in _packers(arrays, {}, "weights"):
            with backend.device_scope(packer.buffer):
                packer.pack(arrays)
                self._broadcast_buffer(packer.buffer, root)
                packer.unpack(arrays)
        for p, a in zip(params, arrays):
            p.data = a

    def mean_gradients(self, parameters, count=None) -> None:
        r"""Replace each parameter's ``grad`` by its mean over the processes, in place.

        ``parameters``: the model's parameters (a list, or a Module); those that require a
        gradient take part. ``count``: this process's number of samples in the batch; when
        given, the mean is weighted by it, :math:`\sum_r B_r g_r / \sum_r B_r`, the
        one-process gradient also when the last batch splits unevenly; when None, every process
        weighs the same, :math:`\frac{1}{size} \sum_r g_r`. A ``grad`` that is None counts as
        zeros (a process whose share of the batch was empty); it stays None only when it is
        None on every process, as one process would leave it (SGD then skips the parameter).
        The counts and these flags travel in the gradients' all-reduce: one call per dtype.
        """
        params = [p for p in _as_parameters(parameters) if p.requires_grad]
        if self.size == 1 or not params:
            return
        grads = [p.grad for p in params]
        for packer in _packers([p.data for p in params], self._buffers, "gradients",
                               flags=True):
            indices, buffer = packer.indices, packer.buffer
            tail = len(indices) + 1       # one has-a-gradient flag per parameter, the count
            with backend.device_scope(buffer):
                present = [grads[i] is not None for i in indices]
                for i in indices:
                    if grads[i] is None:
                        grads[i] = backend.get_array_module(buffer).zeros_like(params[i].data)
                packer.pack(grads)
                if count is not None:
                    buffer[:-tail] *= buffer.dtype.type(count)
                buffer[-tail:] = backend.to_device(np.array(present + [1 if count is None
                                                                         else count]),
                                                   backend.device_of(buffer), buffer.dtype)
                self._allreduce_buffer(buffer)
                sums = backend.to_numpy(buffer[-tail:])
                if sums[-1] == 0:
                    raise ValueError("mean_gradients: no process had a sample in this batch")
                buffer[:-tail] *= buffer.dtype.type(1.0 / sums[-1])
                packer.unpack(grads)
            for i, anywhere in zip(indices, sums[:-1]):
                params[i].grad = grads[i] if anywhere else None

    # -- small host values ---------------------------------------------------------------
    def allreduce_sum(self, values) -> np.ndarray:
        """The element-wise sum over the processes of a small vector of numbers (metric sums:
        loss sum, correct counts, images), as float64 on the host; every process gets it."""
        values = np.array(backend.to_numpy(values) if backend.is_gpu_array(values) else values,
                          dtype=np.float64, ndmin=1)
        if self.size > 1:
            self._allreduce_host(values)
        return values

    def broadcast_object(self, value, root: int = 0):
        """Process ``root``'s ``value`` (a small picklable object: a decision, a path) on every
        process."""
        self._check_root(root)
        return value

    def gather_arrays(self, array, root: int = 0):
        """On ``root``, every process's ``array`` joined along axis 0 in rank order, as a NumPy
        array (lengths may differ: evaluation shares); None on the other processes."""
        self._check_root(root)
        return backend.to_numpy(array)

    def gather_object(self, value, root: int = 0):
        """On ``root``, the list of every process's ``value`` (small and picklable), in rank
        order; None on the other processes."""
        self._check_root(root)
        return [value]

    def barrier(self) -> None:
        """Return when every process has called it."""

    def close(self) -> None:
        """Free what the communicator holds outside Python (NCCL's communicator)."""

    # -- ending ------------------------------------------------------------------------------
    def abort(self, message: str, code: int = 1) -> None:
        """End every process now: print one line naming this rank and ``message`` to stderr,
        then (under MPI) ``MPI_Abort``, which makes ``mpiexec`` end them all with a non-zero
        status. Never returns."""
        print(f"minialex: rank {self.rank} of {self.size} aborts the run: {message}",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        if self.size > 1:   # mpiexec forwards output on its own time; MPI_Abort may drop the rest
            time.sleep(ABORT_GRACE_SECONDS)
        self._abort(int(code) or 1)
        os._exit(int(code) or 1)    # MPICH's MPI_Abort may return before the job is torn down

    @contextlib.contextmanager
    def abort_on_error(self, alike=(), wording=str):
        """A context in which an exception on any one process aborts every process (naming the
        rank and the exception) instead of leaving the others waiting in a collective; with
        one process it is raised as usual. Exceptions of the types ``alike``, which every
        process raises at the same point (a decision taken on all-reduced numbers), are raised
        as usual too. ``wording(line)`` rewords the line (e.g. names settings as flags). The
        processes leave the block together (a barrier, also before an ``alike`` exception), so
        that none ends its program while another still works (rank 0 writing its files).

        Any way out of the block but its end counts, ``SystemExit(0)`` included: a process
        that leaves early, even "successfully", would leave the others waiting. The exit
        status is ``SystemExit``'s code when it is a non-zero int, 130 for a KeyboardInterrupt
        (as a shell reports Ctrl-C), else 1."""
        try:
            yield self
        except alike:
            self.barrier()
            raise
        except BaseException as exc:
            if self.size == 1:
                raise
            code = 1
            if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code:
                code = exc.code
            elif isinstance(exc, KeyboardInterrupt):
                code = 130
            what = f"SystemExit({exc.code!r}), leaving the run early" if isinstance(
                exc, SystemExit) else f"{type(exc).__name__}: {exc}"
            self.abort(wording(what), code)
        self.barrier()

    # -- what a backend provides --------------------------------------------------------------
    def _check_root(self, root):
        if not isinstance(root, (int, np.integer)) or not 0 <= root < self.size:
            raise ValueError(f"{type(self).__name__}: root must be a rank in 0..{self.size - 1}, "
                             f"got {root!r}")

    def _broadcast_buffer(self, buffer, root):
        pass

    def _allreduce_buffer(self, buffer):
        pass

    def _allreduce_host(self, values):
        pass

    def _abort(self, code):
        pass


class SingleProcess(Communicator):
    """One process: every exchange is a no-op, and nothing imports mpi4py."""


class MpiCommunicator(Communicator):
    """MPI through mpi4py (imported here, when one is made): buffer-based collectives on NumPy
    arrays; a CuPy buffer is copied to the host and back (no CUDA-aware MPI is assumed)."""

    name = "mpi"

    def __init__(self):
        super().__init__()
        from mpi4py import MPI  # only when asked for: minialex runs without mpi4py
        self._MPI = MPI
        self._comm = MPI.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        local = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    def _allreduce_buffer(self, buffer):
        if backend.is_gpu_array(buffer):
            host = backend.to_numpy(buffer)
            self._comm.Allreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM)
            buffer[...] = backend.to_device(host, backend.device_of(buffer))
        else:
            self._comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)

    def _broadcast_buffer(self, buffer, root):
        if backend.is_gpu_array(buffer):
            host = backend.to_numpy(buffer)
            self._comm.Bcast(host, root=root)
            buffer[...] = backend.to_device(host, backend.device_of(buffer))
        else:
            self._comm.Bcast(buffer, root=root)

    def _allreduce_host(self, values):
        self._comm.Allreduce(self._MPI.IN_PLACE, values, op=self._MPI.SUM)

    def broadcast_object(self, value, root: int = 0):
        self._check_root(root)
        return self._comm.bcast(value, root=root)

    def gather_arrays(self, array, root: int = 0):
        self._check_root(root)
        parts = self._comm.gather(backend.to_numpy(array), root=root)
        return None if parts is None else np.concatenate(parts)

    def gather_object(self, value, root: int = 0):
        self._check_root(root)
        return self._comm.gather(value, root=root)

    def barrier(self):
        self._comm.Barrier()

    def _abort(self, code):
        self._comm.Abort(code)


def gpu_for(local_rank: int, local_size: int, count: int) -> int:
    """The GPU (of the ``count`` this process sees) for the process of ``local_rank`` among
    ``local_size`` on its machine: ``local_rank % count``. Where every process sees every GPU
    (``mpiexec`` on one machine) that is GPU ``local_rank``, and more processes than GPUs would
    put two on one GPU, which NCCL refuses: that is refused here, naming the numbers. Where a
    launcher gives each process its own GPU (``srun --gpus-per-task=1`` sets
    ``CUDA_VISIBLE_DEVICES``), each sees one, GPU 0.

    >>> gpu_for(3, 4, 4), gpu_for(3, 4, 1)
    (3, 0)
    """
    if count < 1:
        raise ValueError("NcclCommunicator: no GPU is visible to this process")
    if 1 < count < local_size:
        raise ValueError(f"NcclCommunicator: {local_size} processes on this machine share "
                         f"{count} visible GPUs; start at most {count} processes per machine "
                         f"(or give each process one GPU)")
    return local_rank % count


# NCCL's data types (nccl.h ncclDataType_t; cupy.cuda.nccl's NCCL_* names)
_NCCL_TYPES = {np.dtype(np.float16): "NCCL_FLOAT16", np.dtype(np.float32): "NCCL_FLOAT32",
               np.dtype(np.float64): "NCCL_FLOAT64", np.dtype(np.int32): "NCCL_INT32",
               np.dtype(np.int64): "NCCL_INT64"}


class NcclCommunicator(MpiCommunicator):
    """NCCL through ``cupy.cuda.nccl``, one GPU per process, made current here: GPU
    ``local_rank % count`` of the ``count`` this process sees (:func:`gpu_for`). The model's
    buffers go through NCCL (pointers into CuPy arrays, on the current stream); host values and
    objects go through MPI."""

    name = "nccl"

    def __init__(self):
        super().__init__()
        cupy = backend.require_cupy()
        try:
            gpu = gpu_for(self.local_rank, self.local_size,
                          cupy.cuda.runtime.getDeviceCount())
        except ValueError as exc:
            self.abort(str(exc))
        cupy.cuda.Device(gpu).use()
        self.device = f"gpu:{gpu}"
        self._cupy, self._nccl = cupy, cupy.cuda.nccl
        unique_id = self._nccl.get_unique_id() if self.rank == 0 else None
        unique_id = self._comm.bcast(unique_id, root=0)
        self._nccl_comm = self._nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def close(self):
        if self._nccl_comm is not None:
            self._nccl_comm.destroy()
            self._nccl_comm = None

    def _nccl_call(self, buffer):
        if not backend.is_gpu_array(buffer):
            raise TypeError(f"NcclCommunicator: expected a CuPy array on {self.device}, got a "
                            f"{type(buffer).__name__} (move the model with .to(comm.device))")
        if backend.device_of(buffer) != self.device:
            raise ValueError(f"NcclCommunicator: an array on {backend.device_of(buffer)}, but "
                             f"this process's NCCL communicator runs on {self.device}")
        dtype = np.dtype(buffer.dtype)
        if dtype not in _NCCL_TYPES:
            raise TypeError(f"NcclCommunicator: dtype {dtype} has no NCCL type")
        stream = self._cupy.cuda.get_current_stream().ptr
        return buffer.data.ptr, buffer.size, getattr(self._nccl, _NCCL_TYPES[dtype]), stream

    def _allreduce_buffer(self, buffer):
        ptr, count, datatype, stream = self._nccl_call(buffer)
        self._nccl_comm.allReduce(ptr, ptr, count, datatype, self._nccl.NCCL_SUM, stream)

    def _broadcast_buffer(self, buffer, root):
        ptr, count, datatype, stream = self._nccl_call(buffer)
        self._nccl_comm.bcast(ptr, count, datatype, root, stream)


# -- packing ------------------------------------------------------------------------------------
class _Packer:
    """One flat buffer for arrays of one dtype on one device, and the copies in and out of it.

    ``extra`` slots follow the arrays (``mean_gradients`` puts flags and a count there)."""

    def __init__(self, like, indices, sizes, extra):
        xp = backend.get_array_module(like)
        with backend.device_scope(like):
            self.buffer = xp.empty(sum(sizes) + extra, dtype=like.dtype)
        self.indices = indices
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()

    def pack(self, arrays):
        for i, start, end in zip(self.indices, self.offsets, self.offsets[1:]):
            self.buffer[start:end] = arrays[i].reshape(-1)

    def unpack(self, arrays):
        """Copy back into the arrays in place (a read-only one, such as a broadcast view that
        an op's backward may hand out, is replaced by a copy)."""
        for i, start, end in zip(self.indices, self.offsets, self.offsets[1:]):
            part = self.buffer[start:end].reshape(arrays[i].shape)
            if getattr(arrays[i].flags, "writeable", True):
                arrays[i][...] = part
            else:
                arrays[i] = part.copy()


def _packers(arrays, cache, purpose, flags=False):
    """The packers covering ``arrays``, one per (device, dtype), made once and kept in
    ``cache``: a training step allocates no buffer. ``flags``: each buffer ends with one slot
    per array it packs and one more (``mean_gradients``' has-a-gradient flags and count)."""
    groups = {}
    for i, a in enumerate(arrays):
        groups.setdefault((backend.device_of(a), np.dtype(a.dtype).str), []).append(i)
    packers = []
    for (device, dtype), indices in groups.items():
        sizes = tuple(int(arrays[i].size) for i in indices)
        extra = len(indices) + 1 if flags else 0
        key = (device, dtype, purpose, extra, tuple(indices), sizes)
        if key not in cache:
            cache[key] = _Packer(arrays[indices[0]], indices, sizes, extra)
        packers.append(cache[key])
    return packers


def _as_parameters(parameters):
    return parameters.parameters() if hasattr(parameters, "parameters") else list(parameters)


# -- the training loop's side --------------------------------------------------------------------
# Running's sums over the processes (added), and what each process keeps as it is
RUNNING_SUMS = ("images", "loss_sum", "correct1", "correct5")
RUNNING_REST = ("steps", "data_seconds", "compute_seconds")


class DataParallel(Extension):
    """What a :class:`~minialex.train.Trainer` needs to train one model in ``comm.size``
    processes (every process runs one Trainer, with ``rank=comm.rank`` and
    ``reduce_sums=comm.allreduce_sum``, on its share of every batch):

    - ``after_backward``: each gradient becomes the mean over the processes, weighted by their
      samples in the batch (:meth:`Communicator.mean_gradients`), before the optimiser steps;
    - Ctrl-C: a process that gets it only notes it; after every step the processes add their
      notes (one all-reduce of one number), so all of them stop after the same step, rank 0
      saves ``last.npz`` and every ``fit`` returns ``"interrupted"``. (The Trainer's own
      handler sets its flag whenever the signal comes, which could let one process stop a step
      before the others: from the first step on, this extension's handler replaces it.) A
      second Ctrl-C raises KeyboardInterrupt at once, as with one process;
    - the checkpoint's ``data_parallel`` entry: every process's random state (dropout) and,
      mid-epoch, its sums of the epoch so far (:class:`~minialex.train.Running`), taken where
      every process is (the epoch's end, an interrupted fit's end) before rank 0 saves.
      Resumed on as many processes, each gets its own back and the run continues bit for bit.
      The checkpoint's own ``running`` holds the sums over every process, so on another number
      of processes (one included) rank 0 takes those and the saved random stream, and the
      others start from zero sums and new streams.
    """
    order = SAVE - 5      # at an epoch's end, before Checkpoints writes what it gathers

    def __init__(self, comm):
        self.comm = comm
        self.states = None        # every process's [random state, running sums], at rank 0
        self._asked = False       # Ctrl-C noted on this process, not yet agreed
        self._handler_installed = False

    def before_fit(self, trainer):
        self._asked, self._handler_installed = False, False

    def after_backward(self, trainer):
        if not self._handler_installed:      # inside fit, where the Trainer's handler is set
            self._install_handler(trainer)
        self.comm.mean_gradients(trainer.model, count=trainer.running.batch)

    def after_step(self, trainer):
        asked = self._asked or trainer._interrupted    # the latter: Ctrl-C before step 1's end
        agreed = bool(self.comm.allreduce_sum([float(asked)])[0])
        trainer._interrupted = agreed

    def end_epoch(self, trainer, record):
        self._gather(trainer, None)           # the new epoch's sums are empty

    def after_fit(self, trainer):
        if trainer.stopped == "interrupted":  # mid-epoch: the sums so far go in the checkpoint
            running = trainer.running.settle()
            own = {name: getattr(running, name) for name in RUNNING_SUMS + RUNNING_REST}
            totals = running.totals(self.comm.allreduce_sum)
            self._gather(trainer, own)
            # the checkpoint's trainer.running (rank 0's) holds every process's sums, which is
            # what a run resumed on another number of processes (or one) needs
            for name, total in zip(RUNNING_SUMS, totals):
                setattr(running, name, total if self.comm.rank == 0 else 0)

    def state(self):
        return {"data_parallel": {"processes": self.comm.size, "states": self.states}}

    def load(self, trainer, tree):
        states = (tree.get("data_parallel") or {}).get("states")
        if states is not None and len(states) == self.comm.size:   # each its own, exactly
            rng, running = states[self.comm.rank]
            backend.set_rng_state(rng)
            for name, value in (running or {}).items():
                setattr(trainer.running, name, value)
            return
        if self.comm.rank > 0:   # rank 0 holds the saved stream and sums (the Trainer set them)
            backend.manual_seed(process_seed(trainer.config.get("seed", 0), self.comm.rank,
                                             trainer.global_step))
            for name in RUNNING_SUMS:
                setattr(trainer.running, name, 0)

    def _gather(self, trainer, running):
        """Every process's (random state, epoch sums so far or None), at rank 0."""
        self.states = self.comm.gather_object([backend.get_rng_state(), running])

    def _install_handler(self, trainer):
        self._handler_installed = True
        if threading.current_thread() is not threading.main_thread() \
                or not getattr(trainer, "catch_ctrl_c", True):
            return                    # signals reach the main thread; or Ctrl-C raises at once

        def on_sigint(signum, frame):
            if self._asked or trainer._interrupted:
                raise KeyboardInterrupt
            self._asked = True
            trainer.say("\nCtrl-C: stopping after this step, with every process, and saving a "
                        "checkpoint (Ctrl-C again to stop at once)")

        # the Trainer restores the handler from before fit when fit ends
        signal.signal(signal.SIGINT, on_sigint)


def process_seed(seed: int, rank: int, *more: int) -> int:
    """A seed for process ``rank``'s own random stream, derived from the run's ``seed`` (and
    ``more`` numbers): different for every rank, the same every run."""
    return int(np.random.SeedSequence([int(seed), int(rank), *map(int, more)])
               .generate_state(1)[0])

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
  (the process's *local rank*, its rank among the processes of its machine, found with MPI's
  ``COMM_TYPE_SHARED`` split); MPI only starts it (rank 0's NCCL unique id is broadcast over MPI)
  and carries the small host-side sums.

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
import sys

import numpy as np

from . import backend

KINDS = ("auto", "single", "mpi", "nccl")
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
        device: where this process computes (``"cpu"``, or ``"gpu:LOCAL_RANK"`` under NCCL).
    """

    rank, size, local_rank, device = 0, 1, 0, "cpu"
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
        for packer in _packers(arrays, self._buffers, "weights"):
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
                               len(params) + 1):
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

    def barrier(self) -> None:
        """Return when every process has called it."""

    # -- ending ------------------------------------------------------------------------------
    def abort(self, message: str, code: int = 1) -> None:
        """End every process now: print one line naming this rank and ``message`` to stderr,
        then (under MPI) ``MPI_Abort``, which makes ``mpiexec`` end them all with a non-zero
        status. Never returns."""
        print(f"minialex: rank {self.rank} of {self.size} aborts the run: {message}",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        self._abort(int(code) or 1)
        os._exit(int(code) or 1)    # MPICH's MPI_Abort may return before the job is torn down

    @contextlib.contextmanager
    def abort_on_error(self):
        """A context in which an exception on any one process aborts every process (naming the
        rank and the exception) instead of leaving the others waiting in a collective; with
        one process it is raised as usual."""
        try:
            yield self
        except BaseException as exc:
            if self.size == 1 or (isinstance(exc, SystemExit) and not exc.code):
                raise
            self.abort(f"{type(exc).__name__}: {exc}")

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
        self.local_rank = local.Get_rank()
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

    def barrier(self):
        self._comm.Barrier()

    def _abort(self, code):
        self._comm.Abort(code)


# NCCL's data types (nccl.h ncclDataType_t; cupy.cuda.nccl's NCCL_* names)
_NCCL_TYPES = {np.dtype(np.float16): "NCCL_FLOAT16", np.dtype(np.float32): "NCCL_FLOAT32",
               np.dtype(np.float64): "NCCL_FLOAT64", np.dtype(np.int32): "NCCL_INT32",
               np.dtype(np.int64): "NCCL_INT64"}


class NcclCommunicator(MpiCommunicator):
    """NCCL through ``cupy.cuda.nccl``, one GPU per process: the GPU of the process's local
    rank, made current here. The model's buffers go through NCCL (pointers into CuPy arrays,
    on the current stream); host values and objects go through MPI."""

    name = "nccl"

    def __init__(self):
        super().__init__()
        cupy = backend.require_cupy()
        count = cupy.cuda.runtime.getDeviceCount()
        if self.local_rank >= count:
            self.abort(f"NcclCommunicator: local rank {self.local_rank} needs GPU "
                       f"{self.local_rank}, but only {count} GPU(s) are visible on this machine; "
                       f"start at most {count} processes per machine")
        cupy.cuda.Device(self.local_rank).use()
        self.device = f"gpu:{self.local_rank}"
        self._cupy, self._nccl = cupy, cupy.cuda.nccl
        unique_id = self._nccl.get_unique_id() if self.rank == 0 else None
        unique_id = self._comm.bcast(unique_id, root=0)
        self._nccl_comm = self._nccl.NcclCommunicator(self.size, unique_id, self.rank)

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


def _packers(arrays, cache, purpose, extra=0):
    """The packers covering ``arrays``, one per (device, dtype), made once and kept in
    ``cache``: a training step allocates no buffer."""
    groups = {}
    for i, a in enumerate(arrays):
        groups.setdefault((backend.device_of(a), np.dtype(a.dtype).str), []).append(i)
    packers = []
    for (device, dtype), indices in groups.items():
        sizes = tuple(int(arrays[i].size) for i in indices)
        key = (device, dtype, purpose, extra, tuple(indices), sizes)
        if key not in cache:
            cache[key] = _Packer(arrays[indices[0]], indices, sizes, extra)
        packers.append(cache[key])
    return packers


def _as_parameters(parameters):
    return parameters.parameters() if hasattr(parameters, "parameters") else list(parameters)

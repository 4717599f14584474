"""Data parallel training follows the one-process run (minialex/distributed.py).

The comparisons need several processes: they run in an MPI job,

    mpiexec -n 2 python -m mpi4py -m pytest tests/distributed -q -p no:cacheprovider

and a plain (one-process) pytest starts that job itself
(:func:`test_the_comparisons_pass_in_two_processes`) and skips them in its own process, where
they would compare a run with itself.

Each test computes the one-process reference itself, in every process (same seed, the whole
global batch), then the data parallel run (a share of each batch per process, gradients
averaged), and compares. Averaging shares adds the gradient in another order, a rounding
difference (1e-16 in float64, 1e-7 in float32) that ReLU kinks and max-pool winners flipping
can amplify step by step: in float32 at lr 0.005 it reached 2e-5 relative in the loss by the
tenth step, and the weights drifted apart. So the comparisons run twice: in float64 at that rate
(rtol 1e-9, where a small error would stand out of the rounding), and in float32 at lr 0.001,
where no switch flips in ten steps and the loss and weights agree to 1e-5 relative.

Every process runs the same collectives in the same order, and the assertions come after the
last collective of a test, so a failure cannot leave a process waiting.
"""
import itertools
import os
import pathlib
import re
import sys

import numpy as np
import pytest

import minialex
from minialex import backend, distributed
from minialex import functional as F
from minialex.data import transforms as T
from minialex.data.loader import ArrayDataset, Loader
from minialex.distributed import Communicator, MpiCommunicator, NcclCommunicator
from minialex.extensions import Extension
from minialex.models import alexnet
from minialex.optim import SGD
from minialex.tensor import Tensor, no_grad

import host_build
from conftest import TOL
from mpi_jobs import HOST_KERNELS, SKIP_INSIDE_MPI, environment, run_job
from support import make_trainer

STEPS = 10
# 2 processes x 64 images against 1 x 128 on the CPU; a smaller batch on the CuPy stand-in,
# which runs every kernel on the host one launch at a time
CPU_BATCH, GPU_BATCH = 128, 16
# (dtype, learning rate, tolerance): see the module docstring
PRECISIONS = {"float64": (np.float64, 0.005, TOL["data_parallel"]),
              "float32": (np.float32, 0.001, TOL["data_parallel_float32"])}

SEVERAL_PROCESSES = pytest.mark.skipif(
    distributed.launched_size() < 2,
    reason="compares processes, so needs several: test_the_comparisons_pass_in_two_processes "
           "runs it in an MPI job of 2")
COMPARISONS = ["test_processes_sharing_each_batch_follow_one_process_on_the_cpu[float64]",
               "test_processes_sharing_each_batch_follow_one_process_on_the_cpu[float32]",
               "test_processes_sharing_each_batch_follow_one_process_through_nccl",
               "test_evaluation_shares_summed_give_the_one_process_scores",
               "test_mean_gradients_weighs_each_process_by_its_samples"]


@SKIP_INSIDE_MPI
def test_the_comparisons_pass_in_two_processes(request):
    """This file's comparisons as a job of 2 processes; each must pass, none may skip (the
    NCCL one only where no C++ compiler builds the CuPy stand-in's kernels)."""
    try:
        kernels = {HOST_KERNELS: str(request.getfixturevalue("host_kernels").build_dir)}
    except pytest.skip.Exception:
        kernels = {}
    job = run_job(2, sys.executable, "-m", "mpi4py", "-m", "pytest", "-q", "-rA",
                  "-p", "no:cacheprovider", __file__, "-k", " or ".join(
                      name.split("[")[0] for name in set(COMPARISONS)),
                  limit=600, env=environment(**kernels))
    outcomes = {name: outcome for outcome, name in re.findall(
        r"^(PASSED|FAILED|SKIPPED|ERROR) \S+::(\S+)", job.stdout, re.M)}
    expected = [n for n in COMPARISONS if kernels or "nccl" not in n]
    assert job.returncode == 0 and all(outcomes.get(n) == "PASSED" for n in expected), \
        job.stdout[-6000:] + job.stderr[-3000:]


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory):
    """conftest's host build; in the MPI job that the test above starts, the build its starter
    made (in $MINIALEX_TEST_HOST_KERNELS), so that no process compiles it again."""
    built, compiler = os.environ.get(HOST_KERNELS), host_build.find_compiler()
    if built and compiler:
        return host_build.HostKernels(pathlib.Path(built), compiler)
    return host_build.load(tmp_path_factory)


@pytest.fixture(scope="module")
def mpi():
    return MpiCommunicator()


@pytest.fixture
def nccl(gpu):
    """An NCCL communicator on the GPU (or stand-in) of this test, destroyed after it."""
    comm = NcclCommunicator()
    yield comm
    comm.close()


def dataset(n, seed=3):
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, n))


def training_loader(device, batch, num_replicas=1, rank=0, dtype=np.float64):
    """Shuffled, with random crops and flips: the draws must be the one-process draws."""
    augment = np.random.default_rng(1)
    transform = T.Compose([T.ToFloat(dtype=dtype), T.RandomCrop(None, 2, augment),
                           T.RandomHorizontalFlip(0.5, augment), T.Normalize(0.3, 0.3)])
    return Loader(dataset(batch * STEPS), batch, shuffle=True,
                  generator=np.random.default_rng(0), transform=transform, device=device,
                  num_replicas=num_replicas, rank=rank, prefetch=0)


def model_on(device, dtype=np.float64):
    minialex.manual_seed(0)
    return alexnet("mini", dropout=0.0).to(device, dtype)


def train(model, loader, comm, lr):
    """STEPS SGD steps; each step's loss is the global batch's mean loss."""
    optimizer = SGD(model.parameters(), lr=lr)
    losses = []
    for x, y in itertools.islice(loader.epoch(), STEPS):
        loss = F.cross_entropy(model(Tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        comm.mean_gradients(model, count=len(y))
        optimizer.step()
        loss_sum, images = comm.allreduce_sum([float(loss.item()) * len(y), len(y)])
        losses.append(loss_sum / images)
    return np.array(losses)


def weights(model):
    return {name: backend.to_numpy(p.data) for name, p in model.named_parameters()}


def replicas_differ(comm, model):
    """Names of the parameters whose bits differ between the processes (on every process)."""
    differ = []
    for name, w in weights(model).items():
        gathered = comm.gather_arrays(w[None])
        if comm.rank == 0 and any(not np.array_equal(g, gathered[0]) for g in gathered[1:]):
            differ.append(name)
    return comm.broadcast_object(differ)


def follow_one_process(comm, device, batch, precision="float64"):
    dtype, lr, tol = PRECISIONS[precision]
    reference = model_on(device, dtype)
    ref_losses = train(reference, training_loader(device, batch, dtype=dtype), Communicator(), lr)

    parallel = model_on(device, dtype)
    if comm.rank > 0:      # broadcast_model must give every process rank 0's weights
        for p in parallel.parameters():
            p.data *= 2
    comm.broadcast_model(parallel)
    losses = train(parallel, training_loader(device, batch, comm.size, comm.rank, dtype),
                   comm, lr)
    differ = replicas_differ(comm, parallel)

    np.testing.assert_allclose(losses, ref_losses, **tol)
    assert losses[-1] < losses[0]             # it learnt something: the weights moved
    want = weights(reference)
    for name, w in weights(parallel).items():
        np.testing.assert_allclose(w, want[name], **tol, err_msg=name)
    assert differ == []


@SEVERAL_PROCESSES
@pytest.mark.parametrize("precision", PRECISIONS)
def test_processes_sharing_each_batch_follow_one_process_on_the_cpu(mpi, precision):
    follow_one_process(mpi, "cpu", CPU_BATCH, precision)


@SEVERAL_PROCESSES
def test_processes_sharing_each_batch_follow_one_process_through_nccl(nccl):
    assert nccl.device == f"gpu:{distributed.gpu_for(nccl.local_rank, nccl.local_size, 2)}"
    assert backend.parse_device("gpu") == nccl.device    # made current
    follow_one_process(nccl, nccl.device, GPU_BATCH)


@SEVERAL_PROCESSES
def test_evaluation_shares_summed_give_the_one_process_scores(mpi):
    model = model_on("cpu").eval()
    data = dataset(101, seed=4)          # shares of 51 and 50 images for two processes

    def sums(loader):
        loss_sum = correct = images = 0.0
        with no_grad():
            for x, y in loader:
                logits = model(Tensor(x.astype(np.float64) / 255))
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum").item())
                correct += int((logits.data.argmax(axis=1) == y).sum())
                images += len(y)
        return np.array([loss_sum, correct, images])

    want = sums(Loader(data, 32))
    got = mpi.allreduce_sum(sums(Loader(data, 32, num_replicas=mpi.size, rank=mpi.rank,
                                        shard_by="dataset")))
    assert got[1:].tolist() == want[1:].tolist()      # correct and images: exactly
    np.testing.assert_allclose(got[0], want[0], **TOL["float64_exact"])


@SEVERAL_PROCESSES
def test_mean_gradients_weighs_each_process_by_its_samples(mpi):
    w, last, never = (minialex.Parameter(np.zeros(n, np.float32)) for n in (3, 2, 1))
    count = mpi.rank + 1                                   # an uneven last batch
    w.grad = np.full(3, float(mpi.rank + 1), np.float32)   # the mean of each share's losses
    if mpi.rank == mpi.size - 1:        # a gradient on the last process only: zeros elsewhere
        last.grad = np.ones(2, np.float32)
    mpi.mean_gradients([w, last, never], count=count)
    total = sum(r + 1 for r in range(mpi.size))
    expected = sum((r + 1) * (r + 1) for r in range(mpi.size)) / total
    np.testing.assert_allclose(w.grad, np.full(3, expected), **TOL[np.float32])
    np.testing.assert_allclose(last.grad, np.full(2, mpi.size / total), **TOL[np.float32])
    assert never.grad is None           # None everywhere stays None, as for one process

    w.grad = np.full(3, float(mpi.rank), np.float32)
    mpi.mean_gradients([w])                                # unweighted: 1/size of the sum
    np.testing.assert_allclose(w.grad, np.full(3, (mpi.size - 1) / 2), **TOL[np.float32])


def test_the_single_process_exchanges_nothing_and_imports_no_mpi(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    comm = distributed.create_communicator("auto")
    assert type(comm).__name__ == "SingleProcess" and comm.size == 1
    w = minialex.Parameter(np.ones(2, np.float32))
    w.grad = g = np.array([1.5, -2.0], np.float32)
    comm.mean_gradients([w], count=7)
    assert w.grad is g and comm.allreduce_sum(np.array([2, 3])).tolist() == [2.0, 3.0]
    assert comm.broadcast_object("x") == "x" and comm.gather_arrays(np.ones(2)).tolist() == [1, 1]
    monkeypatch.setenv("PMI_SIZE", "4")
    assert distributed.launched_size() == 4


def test_the_watch_sees_the_mean_over_every_process_s_samples_not_of_their_means():
    # another process with 24 samples whose losses sum to 24 (mean 1.0): this one's 8 samples
    # make a quarter of the step's loss, not a half
    sent, seen = [], []

    class Record(Extension):
        def before_update(self, trainer, loss):
            seen.append(loss)

    def with_another(sums):
        sums = np.asarray(sums, np.float64)
        if len(sums) != 2:             # the epoch's metric sums
            return sums
        sent.append(sums)
        return sums + np.array([24.0, 24.0])

    make_trainer(None, epochs=1, reduce_sums=with_another, extensions=[Record()]).fit()
    assert [n for _, n in sent] == [8.0] * 5                 # 40 samples in batches of 8
    want = [(loss_sum + 24.0) / (n + 24.0) for loss_sum, n in sent]
    np.testing.assert_allclose(seen, want, **TOL["float64_exact"])
    assert all(abs(s - 1.0) < abs(loss_sum / n - 1.0) for s, (loss_sum, n) in zip(seen, sent))


def test_each_process_takes_its_gpu_and_two_never_share_one():
    assert [distributed.gpu_for(r, 4, 4) for r in range(4)] == [0, 1, 2, 3]   # mpiexec
    assert [distributed.gpu_for(r, 4, 1) for r in range(4)] == [0, 0, 0, 0]   # one GPU each
    assert [distributed.gpu_for(r, 4, 8) for r in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="4 processes on this machine share 2 visible GPUs; "
                                         "start at most 2 processes per machine"):
        distributed.gpu_for(3, 4, 2)
    with pytest.raises(ValueError, match="no GPU is visible"):
        distributed.gpu_for(0, 1, 0)


def test_a_communicator_kind_is_checked():
    with pytest.raises(ValueError, match=r"kind must be one of \('auto', 'single', 'mpi', "
                                         r"'nccl'\) or None, got 'gloo'"):
        distributed.create_communicator("gloo")
    with pytest.raises(ValueError, match=r"root must be a rank in 0..0, got 3"):
        distributed.create_communicator(None).broadcast_object(1, root=3)

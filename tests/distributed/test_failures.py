"""A process that fails ends the whole job, non-zero and within seconds: no process is left
waiting in an all-reduce for one that will never come (minialex/distributed.py, "Failure").

Each test starts its own 2-process job with mpiexec, so it runs only from a one-process pytest
(inside an MPI job, a nested mpiexec would join the outer job's process manager).
"""
import sys
import time

from mpi_jobs import SKIP_INSIDE_MPI, run_job

DEADLINE = 10       # seconds from the failure to the end of the job
JOB_LIMIT = 120     # seconds for the whole job, start-up included, before it counts as hung

pytestmark = SKIP_INSIDE_MPI

SCRIPT = """
import os, signal, sys, time
from minialex.distributed import create_communicator
comm = create_communicator("mpi")
how, stamp = sys.argv[1], sys.argv[2]
comm.barrier()
def fail():
    with open(stamp, "w") as f:
        f.write(repr(time.time()))
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "exit0":
        sys.exit(0)
    raise RuntimeError("planted failure on rank 1")
if how in ("guarded", "exit0"):
    with comm.abort_on_error():
        if comm.rank == 1:
            fail()
        comm.allreduce_sum([1.0])
else:
    if comm.rank == 1:
        fail()
    comm.allreduce_sum([1.0])   # rank 0 waits here for rank 1
print("rank", comm.rank, "was not ended", flush=True)
"""


def run(tmp_path, how, *python_args):
    script, stamp = tmp_path / "job.py", tmp_path / "failed_at"
    script.write_text(SCRIPT)
    job = run_job(2, sys.executable, *python_args, script, how, stamp, limit=JOB_LIMIT)
    ended = time.time()
    assert stamp.exists(), f"rank 1 never reached its failure:\n{job.stdout}{job.stderr}"
    return job, ended - float(stamp.read_text())


def test_an_exception_on_one_rank_ends_the_job_under_python_m_mpi4py(tmp_path):
    job, seconds = run(tmp_path, "raise", "-m", "mpi4py")
    assert job.returncode != 0 and seconds < DEADLINE, (job.returncode, seconds)
    assert "planted failure on rank 1" in job.stderr
    assert "was not ended" not in job.stdout


def test_abort_on_error_ends_the_job_naming_the_rank_and_the_cause(tmp_path):
    job, seconds = run(tmp_path, "guarded")       # plain python: the guard aborts
    assert job.returncode != 0 and seconds < DEADLINE, (job.returncode, seconds)
    assert ("minialex: rank 1 of 2 aborts the run: RuntimeError: planted failure on rank 1"
            in job.stderr)
    assert "was not ended" not in job.stdout


def test_a_rank_killed_outright_ends_the_job(tmp_path):
    job, seconds = run(tmp_path, "kill", "-m", "mpi4py")
    assert job.returncode != 0 and seconds < DEADLINE, (job.returncode, seconds)
    assert "was not ended" not in job.stdout


def test_leaving_abort_on_error_early_even_with_exit_status_0_ends_the_job(tmp_path):
    job, seconds = run(tmp_path, "exit0")        # rank 0 would wait for rank 1 for ever
    assert job.returncode != 0 and seconds < DEADLINE, (job.returncode, seconds)
    assert ("minialex: rank 1 of 2 aborts the run: SystemExit(0), leaving the run early"
            in job.stderr)
    assert "was not ended" not in job.stdout

"""A process that fails ends the whole job, non-zero and within seconds: no process is left
waiting in an all-reduce for one that will never come (minialex/distributed.py, "Failure").

Each test starts its own 2-process job with mpiexec, so it runs only from a one-process pytest
(inside an MPI job, a nested mpiexec would join the outer job's process manager).
"""
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from minialex import distributed

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEADLINE = 10       # seconds from the failure to the end of the job
JOB_LIMIT = 120     # seconds for the whole job, start-up included, before it counts as hung

pytestmark = pytest.mark.skipif(distributed.launched_size() > 1,
                                reason="starts its own mpiexec: run from a one-process pytest")

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
    raise RuntimeError("planted failure on rank 1")
if how == "guarded":
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


def mpiexec():
    beside = pathlib.Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    assert found, "mpiexec not found (pip install -e '.[mpi]' installs MPICH's)"
    return found


def run_job(tmp_path, how, *python_args):
    script, stamp = tmp_path / "job.py", tmp_path / "failed_at"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPI"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    job = subprocess.run(["timeout", "-k", "5", str(JOB_LIMIT), mpiexec(), "-n", "2",
                          sys.executable, *python_args, str(script), how, str(stamp)],
                         capture_output=True, text=True, env=env)
    ended = time.time()
    assert job.returncode != 124, f"the job hung until the limit:\n{job.stdout}{job.stderr}"
    assert stamp.exists(), f"rank 1 never reached its failure:\n{job.stdout}{job.stderr}"
    return job, ended - float(stamp.read_text())


def test_an_exception_on_one_rank_ends_the_job_under_python_m_mpi4py(tmp_path):
    job, seconds = run_job(tmp_path, "raise", "-m", "mpi4py")
    assert job.returncode != 0 and seconds < DEADLINE, (job.returncode, seconds)
    assert "planted failure on rank 1" in job.stderr
    assert "was not ended" not in job.stdout


def test_abort_on_error_ends_the_job_naming_the_rank_and_the_cause(tmp_path):
    job, seconds = run_job(tmp_path, "guarded")       # plain python: the guard aborts
    assert job.returncode != 0 and seconds < DEADLINE, (job.returncode, seconds)
    assert ("minialex: rank 1 of 2 aborts the run: RuntimeError: planted failure on rank 1"
            in job.stderr)
    assert "was not ended" not in job.stdout


def test_a_rank_killed_outright_ends_the_job(tmp_path):
    job, seconds = run_job(tmp_path, "kill", "-m", "mpi4py")
    assert job.returncode != 0 and seconds < DEADLINE, (job.returncode, seconds)
    assert "was not ended" not in job.stdout

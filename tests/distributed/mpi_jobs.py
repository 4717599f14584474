"""Starting MPI jobs from a one-process pytest (not a test module itself).

A test that starts its own ``mpiexec`` runs only where pytest is one process: inside an MPI job,
a nested mpiexec would join the outer job's process manager. :data:`SKIP_INSIDE_MPI` marks such
tests.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from minialex import distributed

ROOT = pathlib.Path(__file__).resolve().parents[2]
# the variable that hands a job's pytest the folder where kernels/*.cu are built for the host
HOST_KERNELS = "MINIALEX_TEST_HOST_KERNELS"
SKIP_INSIDE_MPI = pytest.mark.skipif(distributed.launched_size() > 1,
                                     reason="starts its own mpiexec: run from a one-process "
                                            "pytest")


def mpiexec() -> str:
    beside = pathlib.Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    assert found, "mpiexec not found (pip install -e '.[mpi]' installs MPICH's)"
    return found


def environment(**extra) -> dict:
    """This environment without an outer launcher's variables, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPI"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_job(processes, *argv, limit=120, env=None):
    """``mpiexec -n processes argv...`` under ``timeout`` (so a hung job fails the test rather
    than the suite); returns the CompletedProcess. Exit status 124 means it hung."""
    job = subprocess.run(["timeout", "-k", "5", str(limit), mpiexec(), "-n", str(processes),
                          *map(str, argv)], capture_output=True, text=True, cwd=ROOT,
                         env=env or environment())
    assert job.returncode != 124, f"the job hung until the limit:\n{job.stdout}{job.stderr}"
    return job

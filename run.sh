#!/usr/bin/env bash
# minialex quick start: one script, two jobs.
#   bash run.sh train [flags...]   set up, then train AlexNet on Fashion-MNIST (examples/train_alexnet.py)
#   bash run.sh test  [pytest args] set up, then lint (ruff, codespell) and run the whole test suite
#                                   (without args: tests/distributed also as 2 MPI processes)
# Set-up (idempotent, each step skipped when already done): a virtual environment in .venv with
# minialex (and for `test` its test, lint and mpi extras), Debian's Fashion-MNIST package (dataset-fashion-mnist), and for
# `test` Debian's g++ (builds kernels/*.cu for the gpu tests) and chromium (the report test renders
# report.html headless). Without either, those tests skip unless CI is set, as .ci/run sets it:
# then they fail.
set -euo pipefail
cd "$(dirname "$0")"

job=${1:-}
case "$job" in
  train|test) shift ;;
  *) echo "usage: bash run.sh train [train flags] | bash run.sh test [pytest args]" >&2; exit 2 ;;
esac

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "run.sh: need root (or sudo) to run: $*" >&2; return 1; fi; }

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then   # Debian ships venv separately
    rm -rf .venv
    as_root apt-get update -qq && as_root apt-get install -y -qq python3-venv >/dev/null
    "$PY" -m venv .venv
  fi
fi
# train: minialex and matplotlib (the report's pictures); test: also the test, lint and mpi extras
# (pytest, PyTorch's CPU build and NVRTC as oracles, ruff, codespell, mpi4py with MPICH's mpiexec)
if [ "$job" = train ]; then
  extras=plot; needs="minialex, matplotlib"
else
  extras=test,lint,mpi; needs="minialex, pytest, hypothesis, matplotlib, torch, mpi4py, nvidia.cuda_nvrtc"
fi
if ! .venv/bin/python -c "import $needs" 2>/dev/null \
    || { [ "$job" = test ] && { [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/codespell ] \
                                || [ ! -x .venv/bin/mpiexec ]; }; }; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
fi
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -e "$FMNIST/t10k-labels-idx1-ubyte.gz" ] && [ -z "${MINIALEX_NO_APT:-}" ]; then
  echo "run.sh: installing Fashion-MNIST (Debian package dataset-fashion-mnist) into $FMNIST"
  as_root apt-get update -qq && as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
# the gpu tests run kernels/*.cu built for the host by a C++ compiler (Debian's g++)
if [ "$job" = test ] && ! command -v g++ >/dev/null && ! command -v c++ >/dev/null \
    && ! command -v clang++ >/dev/null && [ -z "${CXX:-}" ] && [ -z "${MINIALEX_NO_APT:-}" ]; then
  echo "run.sh: installing g++ (Debian package), which builds kernels/*.cu for the gpu tests"
  as_root apt-get update -qq && as_root apt-get install -y -qq g++ >/dev/null
fi
# the report test renders report.html in a headless browser (Debian's chromium)
if [ "$job" = test ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
    && [ -z "${MINIALEX_NO_APT:-}" ]; then
  echo "run.sh: installing chromium (Debian package), which the report test renders pages with"
  as_root apt-get update -qq && as_root apt-get install -y -qq chromium >/dev/null
fi

if [ "$job" = train ]; then
  exec .venv/bin/python examples/train_alexnet.py "$@"
else
  .venv/bin/ruff check .     # pyflakes, pycodestyle, import order (pyproject.toml [tool.ruff])
  .venv/bin/codespell        # spelling of code, docs and file names (setup.cfg [codespell])
  if [ $# = 0 ]; then
    # the data-parallel tests again as 2 MPI processes (the suite below runs them as one);
    # -m mpi4py makes an exception on one rank abort both instead of hanging the other
    echo "run.sh: tests/distributed as 2 processes (mpiexec -n 2)"
    timeout -k 10 900 .venv/bin/mpiexec -n 2 .venv/bin/python -m mpi4py -m pytest -q \
      -p no:cacheprovider tests/distributed
  fi
  exec .venv/bin/python -m pytest -q tests minialex --doctest-modules "$@"
fi

"""The training benchmark's extra CPU measurements on a tiny net: peak memory in a fresh process,
the busy-machine mode's competitors and slowdowns, and DeZero's twin of a variant it can run."""
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import minialex
from minialex import Tensor
from minialex.models import alexnet

from conftest import TOL

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_train  # noqa: E402  (a script folder, not a package)


@pytest.mark.parametrize("rounds", ["0", "-1"])
def test_rounds_below_one_are_refused(rounds, capsys):
    with pytest.raises(SystemExit):
        bench_train.main(["--device", "cpu", "--models", "mini", "--rounds", rounds])
    assert f"--rounds must be >= 1, got {rounds}" in capsys.readouterr().err


def test_busy_counts_parse_and_refuse_bad_input():
    assert bench_train.count_list("1,2") == [1, 2]
    assert bench_train.count_list("none") == bench_train.count_list("0") == []
    with pytest.raises(Exception, match="counts must be >= 1"):
        bench_train.count_list("2,-1")


def test_competitors_run_inside_the_block_and_are_stopped_after_it():
    with bench_train.Competitors(2) as competitors:
        assert [proc.poll() for proc in competitors.procs] == [None, None]  # still running
    assert all(proc.returncode is not None for proc in competitors.procs)


def test_competitors_are_stopped_when_their_start_up_is_interrupted(monkeypatch):
    def interrupt(seconds):
        raise KeyboardInterrupt  # Ctrl-C during the start-up wait, before __enter__ returns
    monkeypatch.setattr(bench_train.time, "sleep", interrupt)
    competitors = bench_train.Competitors(2)
    with pytest.raises(KeyboardInterrupt):
        with competitors:
            pass
    assert len(competitors.procs) == 2
    assert all(proc.returncode is not None for proc in competitors.procs)


def test_a_competitor_stops_by_itself_when_its_parent_goes(tmp_path):
    """The benchmark killed outright (no handler runs): its competitors must not run on."""
    if not pathlib.Path("/proc/self/status").exists():
        pytest.skip("no /proc to watch the competitor with")
    parent = subprocess.run(
        [sys.executable, "-c", "import os, subprocess, sys, time\n"
         "proc = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())])\n"
         "print(proc.pid)\n"
         "time.sleep(2)  # the competitor is in its loop when this parent goes\n",
         bench_train.COMPETITOR], capture_output=True, text=True, check=True)
    status = pathlib.Path(f"/proc/{int(parent.stdout)}/status")
    deadline = time.monotonic() + 30
    while status.exists() and "\tZ" not in status.read_text().split("State:")[1][:4]:
        assert time.monotonic() < deadline, "the competitor outlived its parent"
        time.sleep(0.1)


def test_importing_the_benchmark_leaves_numpy_as_it_is():
    """DeZero's import needs np.int on NumPy >= 1.24; the benchmark lends it for that import
    only, so no other module in the process (this test session included) sees it."""
    pytest.importorskip("dezero", reason="DeZero is an optional comparison")  # nothing lent
    if tuple(int(part) for part in np.__version__.split(".")[:2]) < (1, 24):
        pytest.skip("NumPy < 1.24 still has np.int")
    assert not hasattr(np, "int")


def test_one_run_reports_memory_and_busy_slowdowns(tmp_path, capsys):
    out = tmp_path / "rows.json"
    bench_train.main(["--device", "cpu", "--models", "mini", "--batch", "2", "--steps", "1",
                      "--warmup", "0", "--no-torch", "--busy", "1", "--json", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    # a training step holds the weights' gradients and momentum at least: more than the imports
    assert row["minialex_peak_rss"] > row["minialex_base_rss"] > 0
    busy = row["busy"]["1"]
    assert busy["minialex_train"] > 0 and busy["minialex_slowdown"] > 0
    section = capsys.readouterr().out
    assert "| mini | 2 |" in section and "| mini | 1 |" in section  # memory and busy tables


def test_dezero_twin_computes_minialex_function():
    pytest.importorskip("dezero", reason="DeZero is an optional comparison")
    minialex.manual_seed(0)
    model = alexnet("small").eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 65, 65), dtype=np.float32)
    (forward, params), reason = bench_train.dezero_twin(model)
    assert reason is None and len(list(params.params())) == 16  # 8 layers, weight and bias each
    with bench_train.dezero.test_mode(), bench_train.dezero.no_grad():
        theirs = forward(bench_train.dezero.Variable(x)).data
    with minialex.no_grad():
        mine = model(Tensor(x)).numpy()
    np.testing.assert_allclose(theirs, mine, **TOL[np.float32])
    assert bench_train.dezero_twin(alexnet("mini"))[0] is None  # LRN and groups: no twin


@pytest.mark.parametrize("coretype", [None, "Haswell"])
def test_every_benchmark_names_the_blas_kernels_numpy_ran_and_who_chose_them(coretype):
    # OpenBLAS reads OPENBLAS_CORETYPE when NumPy loads it, so each setting needs a fresh process
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    bench = pathlib.Path(bench_train.__file__).parent
    text = subprocess.run([sys.executable, "-c", "import common; print(common.versions())"],
                          cwd=bench, env=env, capture_output=True, text=True, check=True).stdout
    if not any(info.get("architecture") for info in threadpool_info()):
        assert "NumPy's BLAS" in text  # a BLAS that does not report its kernels: named only
    elif coretype:
        assert f" kernels; OPENBLAS_CORETYPE={coretype})" in text
    else:
        assert " kernels; OPENBLAS_CORETYPE not set: chosen for this CPU)" in text


def test_minialex_and_pytorch_take_turns_and_the_ratio_shows_the_rounds_range():
    turns = []
    mine = lambda: turns.append("minialex") or len(turns)   # noqa: E731
    theirs = lambda: turns.append("torch") or 0              # noqa: E731
    assert bench_train.take_turns(3, mine, theirs) == [[1, 4, 5], [0, 0, 0]]
    assert turns == ["minialex", "torch", "torch", "minialex", "minialex", "torch"]
    row = {"train_ratio": 0.5, "train_ratio_rounds": [1.0, 0.5, 1 / 3]}
    assert bench_train.ratio_cell(row, "train") == "0.50 (0.33-1.00)"
    assert bench_train.ratio_cell({"train_ratio": 0.5}, "train") == "0.50"

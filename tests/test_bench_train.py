"""The training benchmark's extra CPU measurements on a tiny net: peak memory in a fresh process,
the busy-machine mode's competitors and slowdowns, and DeZero's twin of a variant it can run."""
import json
import pathlib
import sys

import numpy as np
import pytest

import minialex
from minialex import Tensor
from minialex.models import alexnet

from conftest import TOL

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_train  # noqa: E402  (a script folder, not a package)


def test_busy_counts_parse_and_refuse_bad_input():
    assert bench_train.count_list("1,2") == [1, 2]
    assert bench_train.count_list("none") == bench_train.count_list("0") == []
    with pytest.raises(Exception, match="counts must be >= 1"):
        bench_train.count_list("2,-1")


def test_competitors_run_inside_the_block_and_are_stopped_after_it():
    with bench_train.Competitors(2) as competitors:
        assert [proc.poll() for proc in competitors.procs] == [None, None]  # still running
    assert all(proc.returncode is not None for proc in competitors.procs)


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

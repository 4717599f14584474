"""The status line and progress bar shared by preparation and training (minialex/progress.py)."""
import io
import sys

from minialex.progress import Progress, StatusLine


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_show_rewrites_in_place_and_print_replaces_it():
    tty = Terminal()
    line = StatusLine(tty)
    line.show("step 10/100 loss 2.3")
    line.show("step 20/100")                 # shorter: padded to erase the longer text
    line.print("epoch 1: loss 2.1")
    line.print("done")                       # nothing transient left to erase
    assert tty.getvalue() == ("\rstep 10/100 loss 2.3" + "\rstep 20/100" + " " * 9
                              + "\repoch 1: loss 2.1\n" + "done\n")


def test_elsewhere_every_line_is_an_ordinary_line():
    log = io.StringIO()
    line = StatusLine(log)
    line.show("step 10/100")
    line.show("step 20/100")
    line.print("epoch 1")
    assert log.getvalue() == "step 10/100\nstep 20/100\nepoch 1\n"


def test_default_stream_is_stdout_at_call_time(capsys):
    line = StatusLine()
    line.print("hello")                       # capsys replaced sys.stdout after construction
    assert capsys.readouterr().out == "hello\n"
    assert line.stream is sys.stdout


def test_progress_is_rate_limited_and_ends_with_a_permanent_line():
    now = [0.0]
    log = io.StringIO()
    bar = Progress("prepare train", 100, stream=log, clock=lambda: now[0])
    for t in (1.0, 5.0, 10.0, 12.0):           # a log gets at most one line per 10 s
        now[0] = t
        bar.update(10)
    now[0] = 20.0
    bar.update(60)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines == ["prepare train: [" + "#" * 9 + "." * 21 + "] 30/100 images, 3/s, 23s left",
                     "prepare train: [" + "#" * 30 + "] 100/100 images, 20s"]


def test_progress_on_a_terminal_redraws_often_and_can_be_silent():
    now = [0.0]
    tty = Terminal()
    bar = Progress("x", 4, unit="files", stream=tty, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 0.25
        bar.update(1)
    bar.close()
    out = tty.getvalue()
    assert out.count("\r") == 4 and out.endswith("4/4 files, 1s" + " " * 10 + "\n")
    quiet = io.StringIO()
    silent = Progress("x", 2, stream=quiet, enabled=False)
    silent.update(2)
    silent.close()
    assert quiet.getvalue() == "" and silent.done == 2

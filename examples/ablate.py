#!/usr/bin/env python3
"""Ablations of AlexNet's design choices: paired runs that differ in one switch, same seed and
budget, with a Markdown table and a plot per study (minialex.ablations).

    python examples/ablate.py --study relu-tanh --device cpu --out runs/ablations
    python examples/ablate.py --study all --budget tiny           # seconds: a smoke test
    python examples/ablate.py --study lrn --study pooling --budget gpu --device gpu

Flags -> minialex.ablations.run_studies. Exit status: 0 done, 1 failed (data unreadable),
2 bad usage (or no usable GPU for --device gpu).
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minialex import ablations, recipe  # noqa: E402

PROG = "ablate.py"


def flags(text) -> str:
    """A library message with its settings (in backquotes: `data_dir`) named as flags."""
    return re.sub(r"`(\w+)`", lambda m: "--" + m[1].replace("_", "-"), str(text))


def build_parser() -> argparse.ArgumentParser:
    studies = "; ".join(f"{s.name}: {s.switch}" for s in ablations.STUDIES.values())
    budgets = "; ".join(f"{b.name}: {b.describe()}" for b in ablations.BUDGETS.values())
    p = argparse.ArgumentParser(prog=PROG, description="Paired ablation runs of AlexNet's "
                                "design choices (paper Sec. 3-4) on Fashion-MNIST.",
                                epilog=f"Studies: {studies}. Budgets: {budgets}.")
    a = p.add_argument
    a("--study", action="append", choices=(*ablations.STUDIES, "all"),
      help="a study to run; repeat for several (default: all)")
    a("--budget", choices=tuple(ablations.BUDGETS),
      help="the run every arm gets (default: the device's, cpu or gpu)")
    a("--device", choices=("auto", "cpu", "gpu"), default="auto",
      help="where to train; auto = the GPU when CuPy and a GPU are usable (default: auto)")
    a("--data-dir", help="directory with the Fashion-MNIST IDX files")
    a("--out", default=os.path.join("runs", "ablations"),
      help="where the tables, plots and runs' JSON go (default: runs/ablations)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = None if not args.study or "all" in args.study else list(dict.fromkeys(args.study))
    try:
        device = recipe.resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:     # a GPU asked for and not usable
        print(f"{PROG}: error: {flags(exc)}", file=sys.stderr)
        return 2
    budget = args.budget or ("gpu" if device.startswith("gpu") else "cpu")
    try:
        ablations.run_studies(names, budget, device=device, out=args.out,
                              data_dir=args.data_dir)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: error: {flags(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:   # the arm under way is dropped; the studies' files stay as written
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"tables and plots: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Write a run folder's report.html, and the paper's Fig. 3 and Fig. 4 from a checkpoint.

    python examples/report.py runs/X                  # report.html with best.npz's test results
    python examples/report.py runs/X --figures        # also conv1's filters and fc7 retrieval
    python examples/report.py OUT --weights bvlc_alexnet.caffemodel --images photos/

The report (:mod:`minialex.report`) opens from disk: curves, speed, confusion matrix, the most
confidently misclassified test images, settings. ``--figures`` (:func:`paper_figures`
below) writes filters.png and retrieval.png beside the same pictures of the untrained
network (and filters_change.png, what training changed; retrieval_pixels.png, raw-pixel
neighbours), and prints the share of same-class neighbours of each. ``--weights`` draws the
same figures from imported weights (:func:`weights_figures`) into the folder OUT: Fig. 3 from
their conv1 (Caffe's ``paper`` net: 96 filters, 48 per tower), Fig. 4 from their fc7 vectors of
the images of ``--images`` (any folder; sub-folders are classes).
Exit status: 0 done, 1 failed (run folder or checkpoint unreadable), 2 bad usage.
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minialex import predict, recipe, visualize  # noqa: E402
from minialex.report import write_report  # noqa: E402

PROG = "report.py"


def flags(text) -> str:
    """A library message with its settings (in backquotes: `data_dir`) named as flags."""
    return re.sub(r"`(\w+)`", lambda m: "--" + m[1].replace("_", "-"), str(text))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="A run's report and the paper's figures.")
    p.add_argument("run_dir", help="a run folder written by train_alexnet.py")
    p.add_argument("--checkpoint", help="checkpoint to test (default: best.npz, else last.npz)")
    p.add_argument("--figures", action="store_true",
                   help="also conv1's filters (Fig. 3) and fc7 retrieval (Fig. 4)")
    p.add_argument("--queries", type=int, default=1000, help="test images queried (1000)")
    p.add_argument("--neighbours", type=int, default=6, help="neighbours per query (6)")
    p.add_argument("--limit-train", type=int, default=10000,
                   help="training images searched (10000)")
    p.add_argument("--limit-test", type=int, help="test on the first N images only")
    p.add_argument("--weights", metavar="FILE", help="figures of imported weights (torchvision "
                   ".pth, Caffe .caffemodel) instead of a run; RUN_DIR receives them")
    p.add_argument("--images", metavar="FOLDER", help="--weights: Fig. 4 among these images")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="cpu",
                   help="where to run the model (default: cpu)")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files")
    p.add_argument("--cache", metavar="DIR", help="where prepared image folders are cached")
    return p


def run_checkpoint(run_dir) -> str | None:
    """A run folder's ``best.npz``, else its ``last.npz``, else None."""
    found = [os.path.join(run_dir, name) for name in ("best.npz", "last.npz")
             if os.path.exists(os.path.join(run_dir, name))]
    return found[0] if found else None


def report_run(run_dir, *, checkpoint_path=None, **options) -> str:
    """Write ``run_dir/report.html`` (:func:`minialex.report.write_report`) for a run folder,
    with the test predictions of ``checkpoint_path`` (default: its ``best.npz``, else
    ``last.npz``; with neither, the curves and tables alone); ``options`` go to
    :func:`minialex.predict.load_run`."""
    checkpoint_path = checkpoint_path or run_checkpoint(run_dir)
    if checkpoint_path is None:
        return write_report(run_dir)
    run, predictions = predict.checkpoint_predictions(checkpoint_path, **options)
    return write_report(run_dir, predictions=predictions, test_images=run.data.test,
                        model=run.model)


def paper_figures(path, out_dir, *, queries: int = 1000, k: int = 6, rows: int = 5,
                  limit_train: int | None = 10000, **options) -> dict:
    """The paper's Fig. 3 and Fig. 4 for checkpoint ``path``, beside the same network untrained
    (its run's seeded initial weights) and, for retrieval, raw pixels. Writes to ``out_dir``
    ``filters.png``, ``filters_untrained.png``, ``filters_change.png`` (trained minus
    untrained: what training learned), ``retrieval.png``, ``retrieval_untrained.png`` and
    ``retrieval_pixels.png``; returns the share of same-class neighbours of each (``k``
    nearest among ``limit_train`` training images, for ``queries`` test images, both drawn
    at random with a fixed seed) and the paths written."""
    run = predict.load_run(path, **options)
    untrained = recipe.build(run.config, run.data, options.get("device", "cpu")).model.eval()
    transform = run.test_loader.transform
    train, test = run.data.train, run.data.test
    out = {"queries": min(queries, len(test)), "neighbours": k,
           "train_images": len(train.head(limit_train)), "share": {}, "files": []}
    for name, picture in (("", visualize.conv1_filters(run.model)),
                          ("_untrained", visualize.conv1_filters(untrained)),
                          ("_change", visualize.conv1_filters(run.model, relative_to=untrained))):
        out["files"].append(visualize.save_png(picture,
                                               os.path.join(out_dir, f"filters{name}.png")))
    for name, features in (
            ("", lambda d: visualize.fc7_features(run.model, d, transform)),
            ("_untrained", lambda d: visualize.fc7_features(untrained, d, transform)),
            ("_pixels", None)):
        found = visualize.retrieval(train, test, features=features, queries=queries, k=k,
                                    limit_train=limit_train)
        out["share"][{"": "trained", "_untrained": "untrained", "_pixels": "pixels"}[name]] = \
            found["share"]
        grid = visualize.retrieval_grid(train, test, found["neighbours"],
                                        queries=found["queries"], rows=rows)
        out["files"].append(visualize.save_png(grid,
                                               os.path.join(out_dir, f"retrieval{name}.png")))
    return out


def weights_figures(path, out_dir, *, images=None, queries: int = 1000, k: int = 6,
                    rows: int = 5, device: str = "cpu") -> dict:
    """Fig. 3 (``filters.png``: conv1 of the weights at ``path``, one block per tower) and,
    with a folder ``images``, Fig. 4 (``retrieval.png``: each query's nearest images of the
    same folder by fc7 distance, itself left out; ``retrieval_pixels.png``: by raw pixels).
    Returns the files written, the towers, and the same-class shares."""
    classifier = predict.Classifier.from_weights(path, device=device)
    model = classifier.model
    out = {"files": [visualize.save_png(visualize.conv1_filters(model),
                                        os.path.join(out_dir, "filters.png"))],
           "filters": model.features[0].weight.shape[0],
           "towers": visualize.conv1_towers(model), "share": {}}
    if images is None:
        return out
    found, classes, skipped = classifier.load_folder(images)
    out.update(images=len(found), classes=len(classes), skipped=len(skipped),
               queries=min(queries, len(found)), neighbours=k)
    for name, features in (("", lambda d: visualize.fc7_features(model, d,
                                                                  classifier.transform)),
                           ("_pixels", None)):
        near = visualize.retrieval(found, found, features=features, queries=queries, k=k,
                                   exclude_self=True)
        out["share"]["fc7" if not name else "pixels"] = near["share"]
        grid = visualize.retrieval_grid(found, found, near["neighbours"],
                                        queries=near["queries"], rows=rows)
        out["files"].append(visualize.save_png(grid, os.path.join(out_dir,
                                                                  f"retrieval{name}.png")))
    return out


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("queries", "neighbours", "limit_train"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name.replace('_', '-')}: expected an integer >= 1, got "
                         f"{getattr(args, name)}")
    if args.images and not args.weights:
        parser.error("argument --images: needs --weights (a run's figures use its test set)")
    if args.weights:
        try:
            found = weights_figures(args.weights, args.run_dir, images=args.images,
                                    queries=args.queries, k=args.neighbours,
                                    device=recipe.resolve_device(args.device))
        except (OSError, ValueError, RuntimeError) as exc:
            print(f"{PROG}: error: {flags(exc)}", file=sys.stderr)
            return 1
        print("\n".join(found["files"]))
        print(f"conv1: {found['filters']} filters, {found['towers']} tower(s) of "
              f"{found['filters'] // found['towers']}")
        if args.images:
            print(f"same-class share of the {found['neighbours']} nearest among "
                  f"{found['images']:,} images of {found['classes']} class(es), over "
                  f"{found['queries']:,} queries: " + ", ".join(
                      f"{k} {v:.3f}" for k, v in found["share"].items()))
        return 0
    if not os.path.isdir(args.run_dir):
        print(f"{PROG}: error: {args.run_dir}: no such run folder", file=sys.stderr)
        return 1
    try:
        options = dict(device=recipe.resolve_device(args.device), data_dir=args.data_dir,
                       cache=args.cache)
        print(report_run(args.run_dir, checkpoint_path=args.checkpoint,
                                 limit_test=args.limit_test, **options))
        if args.figures:
            found = paper_figures(
                args.checkpoint or run_checkpoint(args.run_dir) or
                os.path.join(args.run_dir, "best.npz"), args.run_dir,
                queries=args.queries, k=args.neighbours, limit_train=args.limit_train, **options)
            print("\n".join(found["files"]))
            print(f"same-class share of the {found['neighbours']} nearest of "
                  f"{found['train_images']:,} training images, over {found['queries']:,} test "
                  "images: " + ", ".join(f"{k} {v:.3f}" for k, v in found["share"].items()))
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"{PROG}: error: {flags(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `collapse` command."""
import argparse
import os
import sys

from .config import ConfigError


def _user_errors():
    from .data.coco import DataError
    from .methods import MethodError
    from .models import ModelError
    from .device import DeviceError
    from analysis.results import NotResults
    return (ConfigError, DataError, MethodError, ModelError, DeviceError, NotResults, FileNotFoundError)


def _run_failures():
    from .train import NonFiniteLoss
    return (NonFiniteLoss,)


def cmd_prepare(args):
    if args.source == "synthetic":
        from .data import synthetic
        if args.train <= 0 or args.val <= 0:
            raise ConfigError("--train and --val must be positive")
        synthetic.prepare(args.out, args.train, args.val, args.seed, args.workers)
        print(f"wrote {args.train} train and {args.val} val images to {args.out}")
    else:
        from .data.prepare_coco import prepare
        sizes = []
        for text in args.sizes.split(","):
            try:
                h, w = (int(v) for v in text.lower().split("x"))
            except ValueError:
                raise ConfigError(f"--sizes takes HxW[,HxW...], got '{args.sizes}'")
            sizes.append((h, w))
        prepare(args.root, args.unlabeled_boxes, args.score, sizes, workers=args.workers, seed=args.seed)


def _default_out(cfg, base="results"):
    from .runs import run_id
    return os.path.join(base, f"{cfg.method.name}-{run_id(cfg.to_dict())}")


def _print_final(manifest):
    f = manifest.get("final", {})
    t = manifest.get("timing", {})
    keys = [k + s for s in ("", "/net0", "/net1", "/ens") for k in ("AP", "AP50", "AR", "PCK@0.1") if k + s in f]
    print("  ".join(f"{k} {f[k]:.3f}" for k in keys))
    if t:
        print(f"wall {t['total']:.1f}s  ({t['seconds_per_step']*1000:.1f} ms/step, data path {100*t['data_share']:.1f}% of a step, "
              f"evaluation {t['eval']:.1f}s)")


def cmd_train(args):
    from . import config
    from .train import train
    cfg = config.load(args.config, args.overrides)
    out = args.out or _default_out(cfg)
    manifest = train(cfg, out, progress=not args.quiet)
    print(f"run {manifest['run_id']} {manifest['status']}: {out}")
    _print_final(manifest)


def cmd_demo(args):
    from . import demo
    from .config import ConfigError
    from analysis.claims import claims, to_markdown
    from analysis.demo import demo_figure, demo_table
    args.grid = args.grid or demo.GRID
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    except ValueError:
        raise ConfigError(f"--seeds takes a comma-separated list of integers, got '{args.seeds}'")
    for seed in seeds:
        print(f"collapse demo: the study's methods on the synthetic set, seed {seed}, {args.jobs} at a time")
        names = demo.run_all(args.grid, args.out, seed, args.overrides, args.jobs)
        table = demo_table(args.out, names.values())
        print(table.to_markdown(floatfmt=".3f"))
    demo_figure(args.out, names.values(), os.path.join(args.out, "collapse_curves"))
    from .runs import atomic_write_text
    atomic_write_text(os.path.join(args.out, "table.md"), table.to_markdown(floatfmt=".3f") + "\n")
    print(f"figure: {os.path.join(args.out, 'collapse_curves.png')} (and .pdf), table: table.md (seed {seeds[-1]})")
    found = claims(args.out)
    found = found[found.verdict != "no runs"]
    print("\nthe paper's claims these runs can test (every seed in the folder; `collapse claims` for all):")
    print(to_markdown(found), end="")


def cmd_grid(args):
    from .grid import run_grid
    states = run_grid(args.grid, args.out, args.executor, args.scale, args.dry_run, args.retry_failed, args.jobs,
                      args.threads, args.address, args.cpus, args.gpus)
    if not args.dry_run and any(s == "failed" for s in states.values()):
        print(f"failed runs keep their reason in their manifest.json; logs in {os.path.join(args.out, 'logs')}")


def cmd_bench(args):
    from . import config
    from .bench import bench
    if args.steps < 1 or args.batches < 1:
        raise ConfigError("--steps and --batches must be positive")
    bench(config.load(args.config, args.overrides), args.steps, args.batches, args.workers)


def cmd_figures(args):
    from analysis import write_figures
    paths = write_figures(args.results, args.out)
    print("\n".join(paths))


def cmd_report(args):
    from analysis import report
    print(report(args.results, args.out), end="")
    if args.out:
        from analysis.claims import write
        write(args.results, args.out)
        print(f"wrote {os.path.join(args.out, 'table.md')}, table.tex and, beside them, claims.md (the paper's claims "
              "with intervals over seeds: collapse claims)")
    else:
        print(f"the paper's claims with intervals over seeds: collapse claims {args.results}")


def cmd_claims(args):
    from analysis.claims import write
    print(write(args.results, args.out), end="")
    print(f"wrote {os.path.join(args.out or args.results, 'claims.md')} and claims.json")


def cmd_toy(args):
    from analysis import toy
    toy.run_cli(args, lambda msg: (_ for _ in ()).throw(ConfigError(msg)))


def parser():
    p = argparse.ArgumentParser(prog="collapse", description="Semi-supervised heatmap pose estimation: "
                                "why consistency training collapses, and what prevents it.")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("prepare", help="write a data set in COCO format")
    prs = pr.add_subparsers(dest="source", required=True)
    syn = prs.add_parser("synthetic", help="procedurally generated COCO-17 persons (the embedded default)")
    syn.add_argument("--out", required=True, help="folder for annotations/ and images/")
    syn.add_argument("--train", type=int, default=6000, help="training images (default 6000)")
    syn.add_argument("--val", type=int, default=400, help="validation images (default 400)")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    syn.set_defaults(func=cmd_prepare)
    co = prs.add_parser("coco", help="COCO person keypoints: filtered instances, labeled splits, unlabeled pool, "
                        "crop stores", description="Reads ROOT/annotations/person_keypoints_{train,val}2017.json "
                        "(and image_info_unlabeled2017.json with --unlabeled-boxes); writes ROOT/splits/ "
                        "(first_N and random_N for 1K/5K/10K/all) and the crop stores (parallel, resumable).")
    co.add_argument("--root", required=True, help="COCO folder")
    co.add_argument("--unlabeled-boxes", help="detection results (COCO format) on unlabeled2017: the unlabeled pool")
    co.add_argument("--score", type=float, default=0.5, help="minimum detection score for the pool (default 0.5)")
    co.add_argument("--sizes", default="256x192,384x288", help="crop-store input sizes (default 256x192,384x288)")
    co.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    co.add_argument("--seed", type=int, default=0, help="seed of the random splits")
    co.set_defaults(func=cmd_prepare)

    tr = sub.add_parser("train", help="train one run", description="Train one run. Overrides are dotted "
                        "config keys, e.g. method.name=supervised train.steps=2000.")
    tr.add_argument("config", help="YAML config (may extend configs/base.yaml)")
    tr.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    tr.add_argument("--out", help="run folder (default results/<method>-<run id>)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    de = sub.add_parser("demo", help="the main job: the study's methods on the embedded synthetic set",
                        description="Prepare the synthetic set if absent, run the demo grid (configs/grids/demo.yaml: "
                        "a supervised stage per seed, then supervised, consistency, mean_teacher, threshold, reweight, "
                        "easy_hard and dual continue from it) through the grid machinery (resumable); print the table, "
                        "write the collapse-curve figure, and print the verdicts on the paper's claims the folder's "
                        "runs can test.")
    de.add_argument("--out", default="results/demo", help="results folder (default results/demo)")
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--seeds", help="several seeds in turn, e.g. 0,1,2 (the claims need >= 3 for a verdict)")
    de.add_argument("--grid", default=None, help="the demo grid (default configs/grids/demo.yaml)")
    de.add_argument("--jobs", type=int, default=2, help="runs at once, one CPU thread each (default 2)")
    de.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    de.set_defaults(func=cmd_demo)

    gr = sub.add_parser("grid", help="run an ablation grid (resumable; local processes or Ray)",
                        description="Expand a grid file into runs named by the hash of their resolved config; "
                        "skip finished runs, resume interrupted ones, record failed ones and go on.")
    gr.add_argument("grid", help="grid file, e.g. configs/grids/failed_attempts.yaml")
    gr.add_argument("--out", required=True, help="results folder")
    gr.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="local: subprocesses, one per visible GPU or --jobs on CPU; ray: one Ray task per run")
    gr.add_argument("--scale", help="one of the grid's scales (default: its first, e.g. demo)")
    gr.add_argument("--dry-run", action="store_true", help="list the runs and which are finished; run nothing")
    gr.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    gr.add_argument("--jobs", type=int, help="local on CPU: runs at once (default 1)")
    gr.add_argument("--threads", type=int, help="local on CPU: threads per run (default cores / jobs)")
    gr.add_argument("--address", help="ray: cluster address (default: start a local Ray)")
    gr.add_argument("--cpus", type=int, default=1, help="ray: CPUs per run (default 1)")
    gr.add_argument("--gpus", type=float, default=0, help="ray: GPUs per run (default 0)")
    gr.set_defaults(func=cmd_grid)

    be = sub.add_parser("bench", help="training speed, and the batched data path vs a per-sample CPU pipeline",
                        description="On the current device: ms/step, steps/s, images/s, the data path's share of a "
                        "step, and the same labeled batches from a per-sample CPU pipeline (PIL warps, numpy targets, "
                        "DataLoader workers) as a ratio.")
    be.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    be.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    be.add_argument("--steps", type=int, default=50, help="timed training steps (default 50)")
    be.add_argument("--batches", type=int, default=30, help="timed batches per data path (default 30)")
    be.add_argument("--workers", type=int, help="DataLoader workers of the per-sample pipeline (default: CPU count)")
    be.set_defaults(func=cmd_bench)

    fi = sub.add_parser("figures", help="paper-ready figures of a results folder (PNG + PDF)",
                        description="Collapse curves, response distributions (ridge), fg/bg boundary drift and "
                        "final-AP bars of every run under RESULTS; PDF with embedded TrueType fonts, and PNG.")
    fi.add_argument("results", help="results folder (runs anywhere below it)")
    fi.add_argument("--out", required=True, help="folder for the figures")
    fi.set_defaults(func=cmd_figures)

    re_ = sub.add_parser("report", help="the comparison table (Markdown; LaTeX too with --out)",
                         description="Rows = methods (+ augmentation), columns = labeled-set sizes, cells = final "
                         "OKS AP x 100, mean +- std over seeds.")
    re_.add_argument("results", help="results folder")
    re_.add_argument("--out", help="also write table.md and table.tex here")
    re_.set_defaults(func=cmd_report)

    cl = sub.add_parser("claims", help="the paper's claims as verdicts with 95%% intervals over seeds",
                        description="Pairs the runs of a results folder by setting and seed and gives, per claim of "
                        "the paper (C1-C7, and the dual-vs-single factors F1-F6), the paired difference in final AP "
                        "and unlabeled response, its 95%% interval and a verdict: holds, fails, inconclusive or no runs.")
    cl.add_argument("results", help="results folder")
    cl.add_argument("--out", help="folder for claims.md and claims.json (default: the results folder)")
    cl.set_defaults(func=cmd_claims)

    from analysis.toy import DESCRIPTION, add_arguments
    to = sub.add_parser("toy", help="the 2-D toy study of the decision boundary", description=DESCRIPTION)
    add_arguments(to)
    to.set_defaults(func=cmd_toy)
    return p


def main(argv=None):
    if os.environ.get("COLLAPSE_DIE_WITH_PARENT") == "1":  # a grid's training subprocess
        from .grid import die_with_parent
        die_with_parent()
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except _user_errors() as e:
        if args.debug:
            raise
        msg = str(e) if not isinstance(e, FileNotFoundError) else f"file not found: {e.filename or e}"
        print(f"collapse: error: {msg}", file=sys.stderr)
        return 2
    except _run_failures() as e:
        if args.debug:
            raise
        print(f"collapse: run failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("collapse: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

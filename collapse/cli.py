"""The `collapse` command: prepare, train, evaluate, grid, bench here; the analysis commands (demo, figures, report,
claims, toy) come from the packages that declare a `collapse.commands` entry point (analysis/cli.py), so
the library never imports analysis. A user's mistake is one line and exit 2, a failed run one line and exit 1.

Each command imports what it runs, inside its function: torch, torchvision and scipy take seconds to import,
which `collapse --help`, a mistyped command and every grid subprocess would otherwise pay."""
import argparse
import os
import sys
from importlib.metadata import entry_points

from . import config
from .errors import ConfigError, RunFailure, UserError


def cmd_prepare(args):
    from .data import synthetic
    from .data.prepare_coco import prepare
    if args.source == "synthetic":
        if args.train <= 0 or args.val <= 0:
            raise ConfigError("--train and --val must be positive")
        synthetic.prepare(args.out, args.train, args.val, args.seed, args.workers, args.world)
        print(f"wrote {args.train} train and {args.val} val images to {args.out}")
        return
    sizes = []
    for text in args.sizes.split(","):
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--sizes takes HxW[,HxW...], got '{args.sizes}'")
        sizes.append((h, w))
    if args.source == "coco":
        prepare(args.root, args.unlabeled_boxes, args.score, sizes, workers=args.workers, seed=args.seed)
    else:
        from .data import prepare_mpii_aic
        prepare_mpii_aic.prepare(args.source, args.annotations, args.images, args.out, args.split, sizes,
                                 workers=args.workers, head_boxes=args.head_boxes)


def _default_out(cfg, base="results"):
    from .runs import run_id
    return os.path.join(base, f"{cfg.method.name}-{run_id(cfg.to_dict())}")


def _print_final(manifest):
    f = manifest.get("final", {})
    t = manifest.get("timing", {})
    keys = [k + s for s in ("", "/net0", "/net1", "/net2", "/ens") for k in ("AP", "AP50", "AR", "PCK@0.1") if k + s in f]
    print("  ".join(f"{k} {f[k]:.3f}" for k in keys))
    if t:
        print(f"wall {t['total']:.1f}s  ({t['seconds_per_step']*1000:.1f} ms/step, data path {100*t['data_share']:.1f}% of a step, "
              f"evaluation {t['eval']:.1f}s)")


def cmd_train(args):
    from . import distributed
    from .device import resolve_device
    from .runs import RunDir
    from .train import train
    cfg = config.load(args.config, args.overrides)  # checked here, before any process starts
    out = args.out or _default_out(cfg)
    distributed.local_batches(cfg.train, args.nproc)  # the global batch divides among the processes
    if args.nproc > 1:
        distributed.launch(args.nproc, resolve_device(cfg.train.device), train, cfg, out, not args.quiet)
        manifest = RunDir(out).manifest()
    else:
        manifest = train(cfg, out, progress=not args.quiet)
    if distributed.from_env().main:  # under torchrun, rank 0 speaks for the run
        print(f"run {manifest['run_id']} {manifest['status']}: {out}")
        _print_final(manifest)


def cmd_grid(args):
    from .grid import run_grid
    if args.gpus_per_run < 1:
        raise ConfigError(f"--gpus-per-run must be at least 1, got {args.gpus_per_run}")
    states = run_grid(args.grid, args.out, args.executor, args.scale, args.dry_run, args.retry_failed, args.jobs,
                      args.threads, args.address, args.cpus, args.gpus, gpus_per_run=args.gpus_per_run)
    if not args.dry_run and any(s == "failed" for s in states.values()):
        print(f"failed runs keep their reason in their manifest.json; logs in {os.path.join(args.out, 'logs')}")


def cmd_evaluate(args):
    from .reevaluate import reevaluate
    reevaluate(args.run, args.overrides)


def cmd_bench(args):
    from .bench import bench
    if args.steps < 1 or args.batches < 1 or args.rounds < 1 or args.decode < 0:
        raise ConfigError("--steps, --batches and --rounds must be positive, --decode >= 0")
    cfg = config.load(args.config, args.overrides)
    if args.compile or args.memmap:
        from .bench import compile_race, memmap_race
        if args.compile:
            compile_race(cfg, args.steps, args.rounds)
        if args.memmap:
            memmap_race(cfg, args.steps, args.rounds)
    else:
        bench(cfg, args.steps, args.batches, args.workers, args.rounds, args.decode)


def cmd_gpu_check(args):
    from .gpu_check import gpu_check
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out} is a file, not a folder for the report")
    report = gpu_check(args.out)
    if not report["ok"]:
        raise RunFailure(f"some checks failed: {os.path.join(args.out, 'gpu_check.md')}")


def _config_arguments(command, config_help):
    """A command that reads a config: the YAML file, then dotted overrides (train, bench)."""
    command.add_argument("config", help=config_help)
    command.add_argument("overrides", nargs="*", help="key.sub=value overrides")


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
    syn.add_argument("--world", type=int, default=1, help="1: the demo's world so far; 2: every labeled joint has "
                     "a cue (data.synthetic_world)")
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
    for kind, what in (("mpii", "MPII persons: HRNet/mmpose's JSON (joints, joints_vis, center, scale, image) or "
                                "the official mpii_human_pose_v1_u12_1.mat"),
                       ("aic", "AI Challenger persons: the original keypoint_*_annotations_*.json or mmpose's "
                               "COCO-style file with 14 keypoints")):
        ot = prs.add_parser(kind, help=f"{what}, as a COCO-format split with crop stores",
                            description=f"{what}. Writes ROOT/annotations/person_keypoints_SPLIT.json in the set's own "
                            "skeleton (MPII 16 joints, AIC 14), links ROOT/images/SPLIT to the image folder and builds "
                            "the crop stores.")
        ot.add_argument("--annotations", required=True, help="the annotation file")
        ot.add_argument("--images", required=True, help="the folder of its images")
        ot.add_argument("--out", required=True, help="ROOT: the data folder (data.root) to write into")
        ot.add_argument("--split", required=True, help="the split's name, e.g. mpii_train, mpii_valid, aic_train")
        ot.add_argument("--sizes", default="256x256", help="crop-store input sizes (default 256x256, the seed's)")
        ot.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
        if kind == "mpii":
            ot.add_argument("--head-boxes", help="gt_valid.mat beside the JSON (headboxes_src): PCKh's official head "
                            "sizes, the standard protocol (without: head size from head top and upper neck)")
        ot.set_defaults(func=cmd_prepare, head_boxes=None)

    tr = sub.add_parser("train", help="train one run", description="Train one run. Overrides are dotted "
                        "config keys, e.g. method.name=supervised train.steps=2000.")
    _config_arguments(tr, "YAML config (may extend configs/base.yaml)")
    tr.add_argument("--out", help="run folder (default results/<method>-<run id>)")
    tr.add_argument("--nproc", type=int, default=1, help="processes for one run (DDP; a GPU each, or gloo on "
                    "the CPU); train.batch_* are the global batch. torchrun --nproc-per-node N -m collapse train ... "
                    "works too")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="score a run's nets again under other evaluation settings (no training)",
                        description="Evaluate a run's checkpoint again: each net, and their ensemble, under other "
                        "eval.* settings (flip_test, decode, boxes, metric) or another data.val_split / data.val. "
                        "Writes RUN/evaluations/<settings id>/ (metrics.parquet, predictions/, settings.yaml) and "
                        "prints a table; the run's own files are untouched.")
    ev.add_argument("run", help="a run folder")
    ev.add_argument("overrides", nargs="*", help="eval.flip_test=true eval.decode=dark eval.metric=pckh data.val_split=...")
    ev.set_defaults(func=cmd_evaluate)

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
    gr.add_argument("--gpus", type=float, default=0, help="ray: GPUs per run (default 0; 2 or more: a DDP run over them)")
    gr.add_argument("--gpus-per-run", type=int, default=1, help="local with GPUs: GPUs per run, one DDP run over "
                    "each group (default 1)")
    gr.set_defaults(func=cmd_grid)

    be = sub.add_parser("bench", help="training speed; the batched data path vs per-sample pipelines; image decoding",
                        description="On the current device: ms/step, steps/s, images/s, the data path's share of a "
                        "step; the same labeled batches from per-sample pipelines in DataLoader workers "
                        "(torchvision.transforms.v2 with KeyPoints, with --workers and with 1; the classical PIL one) "
                        "as ratios to the batched path; and crop-store decoding, TorchCodec batched vs PIL.")
    _config_arguments(be, "YAML config, e.g. configs/demo.yaml")
    be.add_argument("--steps", type=int, default=50, help="timed training steps (default 50)")
    be.add_argument("--batches", type=int, default=30, help="timed batches per data path (default 30)")
    be.add_argument("--workers", type=int, help="DataLoader workers of the per-sample pipelines (default 2; v2 runs with 1 too)")
    be.add_argument("--rounds", type=int, default=3, help="alternating rounds per data path, the median kept (default 3)")
    be.add_argument("--decode", type=int, default=256, help="train images in the decoding race (default 256; 0: none)")
    be.add_argument("--compile", action="store_true", help="instead: ms/step with and without train.compile, alternating "
                    "rounds of --steps steps in one process, as a ratio")
    be.add_argument("--memmap", action="store_true", help="instead: ms/step with the store resident on the device and "
                    "read ahead from its memory map (data.resident_gb=0), alternating rounds, as a ratio")
    be.set_defaults(func=cmd_bench)

    gc = sub.add_parser("gpu-check", help="the one command a GPU host runs: CUDA's rules, CUDA vs CPU numbers, speed",
                        description="On any machine: every method's training step audited against CUDA's rules on "
                        "the CPU (no host waits, no low-precision geometry; bf16 geometry bit-equal to float32's). "
                        "With a GPU also: every step under torch.cuda.set_sync_debug_mode('error'), a CUDA step "
                        "against a CPU step (losses, gradients), pytest -m cuda, bench of R18 dual 256x192 32+32 "
                        "(eager, compiled, memory map; MFU; the COCO-1K schedule's time) and a 2-GPU DDP run where "
                        "two GPUs are visible. Writes OUT/gpu_check.json and OUT/gpu_check.md, listing what is owed.")
    gc.add_argument("--out", default="results/gpu_check", help="folder for the report (default results/gpu_check)")
    gc.set_defaults(func=cmd_gpu_check)

    for plugin in entry_points(group="collapse.commands"):  # analysis: demo, figures, report, claims, toy
        plugin.load()(sub)

    return p


def main(argv=None):
    if os.environ.get("COLLAPSE_DIE_WITH_PARENT") == "1":  # a grid's training subprocess
        from .distributed import die_with_parent
        die_with_parent()
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, FileNotFoundError) as e:
        if args.debug:
            raise
        msg = str(e) if not isinstance(e, FileNotFoundError) else f"file not found: {e.filename or e}"
        print(f"collapse: error: {msg}", file=sys.stderr)
        return 2
    except RunFailure as e:
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

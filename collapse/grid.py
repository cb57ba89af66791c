"""Ablation grids: expansion into hashed runs, and executors (local processes, one per GPU; or Ray).

A grid file (configs/grids/*.yaml):

    base: ../demo.yaml            # the config every run starts from (path relative to the grid file)
    scales:                       # optional named sets of overrides; --scale picks one (default: the first)
      demo: {}
      full: {base: ../coco/r18_base.yaml, data.labeled: 1000}    # a scale may name its own base
    fixed: {train.steps: 1200}    # optional overrides for every run
    variants:                     # optional explicit rows (non-product), each crossed with the axes;
                                  # a variant's own value of an axis key wins (duplicates are dropped), and a
                                  # method setting the variant's method does not read is not applied to it
      - {method.name: supervised}
      - {method.name: threshold, method.tau: 0.2}
    axes:                         # cartesian product
      train.seed: [0, 1, 2]
    warm_start:                   # optional: every run continues from a supervised stage (train.init_from)
      train.steps: 1200           # the stage's overrides on top of the run's own data/model/train settings
                                  # (or a file of them, beside the grid: warm_start.yaml; or per scale:
                                  # {demo: {...} or a file, full: {...}}; a scale without one: no stage)

A warm-started grid first runs its supervised stages, one per setting and seed, shared by every method of
that setting (RESULTS/warm_start/supervised-<run id>, skipped when done, like any run); a two-net method's
net 1 starts from the stage of seed + SECOND_NET_SEED (the original gives its two nets different
initialisations; with train.init_same both nets start from the seed's stage). A run whose own values set
train.init_from (say, "" for from scratch) keeps them.

Each resolved config is a run named `<method>-<run id>` (run id = hash of the resolved config), in
RESULTS. Done (and collapsed) runs are skipped, interrupted ones resume from their checkpoint, failed
ones are recorded with their reason and skipped unless retried. Every run is a `collapse train`
subprocess, so one crash cannot take the grid down (collapse/executors.py); logs go to RESULTS/logs/.
"""
import dataclasses
import functools
import itertools
import os
from dataclasses import dataclass

from . import config
from .errors import ConfigError
from .executors import GridError, check_answers, run_local, run_ray, visible_gpus
from .methods.registry import METHODS
from .runs import FINISHED, RunDir, final_value, run_id

WARM_START = "warm_start"   # the folder of a grid's supervised stages, inside its results folder
SECOND_NET_SEED = 1000      # net 1 of a two-net method starts from the stage of seed + this


@dataclass
class GridRun:
    name: str            # folder name: <method>-<run id>
    values: dict         # the dotted overrides that make this run (scale, fixed, variant, axes)
    varies: dict         # the part of them that tells this run from the grid's others (variant, axes)
    cfg: config.Config
    run_id: str
    folder: str
    stage: bool = False  # a supervised stage other runs start from: run before them

    def status(self):
        return RunDir(self.folder).manifest().get("status", "missing")


def _mapping(raw, key, path):
    v = raw.get(key) or {}
    if not isinstance(v, dict):
        raise GridError(f"{path}: '{key}' must be a mapping of config keys")
    return v


def _stage_file(value, path):
    """A warm_start given as a file name (beside the grid file): the mapping it holds, so grids that share
    their supervised stages state them once (configs/grids/warm_start.yaml)."""
    if not isinstance(value, str):
        return value or {}
    return config.read_mapping(os.path.join(os.path.dirname(path), value), "warm_start", "config keys", GridError)


def expand(path, results, scale=None, overrides=()):
    """The grid's runs, in file order (variants outer, axes inner), without duplicates. A variant's own
    value of an axis key wins over the axis (so a supervised row need not repeat per unsup_weight);
    `overrides` (key=value strings) apply last, to every run."""
    raw = config.read_mapping(path, "grid", "grid keys (base, axes, variants, ...)", GridError)
    unknown = set(raw) - {"base", "scales", "fixed", "variants", "axes", "description", "warm_start"}
    if unknown:
        raise GridError(f"{path}: unknown grid key(s) {', '.join(sorted(unknown))}")
    if "base" not in raw:
        raise GridError(f"{path}: 'base' (the config every run starts from) is missing")
    base = os.path.join(os.path.dirname(path), str(raw["base"]))
    scales = _mapping(raw, "scales", path)
    if scale is not None and scale not in scales:
        raise GridError(f"{path} has no scale '{scale}'" + (f" (choose from {', '.join(scales)})" if scales else ""))
    scale_values = scales[scale or next(iter(scales))] if scales else {}
    if not isinstance(scale_values or {}, dict):
        raise GridError(f"{path}: scale '{scale}' must be a mapping of config keys")
    scale_values = dict(scale_values or {})
    if "base" in scale_values:  # a scale may start from its own config (full: configs/coco/r18_base.yaml)
        base = os.path.join(os.path.dirname(path), str(scale_values.pop("base")))
    axes = _mapping(raw, "axes", path)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{path}: axis '{key}' must be a non-empty list")
    variants = raw.get("variants") or [{}]
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise GridError(f"{path}: 'variants' must be a list of mappings of config keys")
    warm = _stage_file(raw.get("warm_start"), path)
    if not isinstance(warm, dict):
        raise GridError(f"{path}: 'warm_start' must be a mapping of config keys or a file of one")
    if scales and warm and set(warm) <= set(scales):  # per scale: {demo: {...} or a file, full: ...}
        warm = _stage_file(warm.get(scale or next(iter(scales))), path) or {}
        if not isinstance(warm, dict):
            raise GridError(f"{path}: warm_start of scale '{scale}' must be a mapping of config keys")
    base_method = functools.lru_cache(maxsize=1)(lambda: config.load(base).method.name)  # read once, if asked
    runs, stages, seen = [], {}, set()
    for variant in variants:
        for combo in itertools.product(*axes.values()):
            shared = {**(scale_values or {}), **_mapping(raw, "fixed", path), **dict(zip(axes, combo))}
            try:
                values = {**_read_by(shared, _method_name(base_method, overrides, {**shared, **variant})), **variant}
                cfg = config.load(base, overrides, values=values)
                if warm and "train.init_from" not in values:
                    method = METHODS[cfg.method.name]
                    nets = 1 if cfg.train.init_same else method.net_count(cfg.method)
                    sources = [_stage(cfg, warm, overrides, method.warm_stage(k) * SECOND_NET_SEED, results, stages)
                               for k in range(nets)]
                    values = {**values, "train.init_from": ",".join(sources)}
                    cfg = config.load(base, overrides, values=values)
            except ConfigError as e:
                raise GridError(f"{path}: {e}")
            rid = run_id(cfg.to_dict())
            if rid in seen:
                continue
            seen.add(rid)
            name = f"{cfg.method.name}-{rid}"
            runs.append(GridRun(name, values, {**dict(zip(axes, combo)), **variant}, cfg, rid,
                                os.path.join(results, name)))
    return list(stages.values()) + runs


def _method_name(base_method, overrides, values):
    """The method a run will use: the command line's, else the grid's values', else the base config's."""
    over = config.parse_overrides(overrides).get("method", {})
    return over.get("name") or values.get("method.name") or base_method()


def _read_by(shared, name):
    """The grid's shared values (scale, fixed, axes) without the method settings method `name` does not
    read: an axis over method.unsup_weight does not apply to supervised (its runs are one run)."""
    reads = {f.name for f in dataclasses.fields(config.method_settings(name))}
    return {k: v for k, v in shared.items() if not k.startswith("method.") or k.split(".", 1)[1] in reads}


def _stage(cfg, warm, overrides, seed_offset, results, stages):
    """The folder of the supervised stage a run starts from (added to `stages` once): the run's own data,
    augmentation, model, evaluation and train settings (seed + seed_offset), the method's defaults with
    name supervised, then the grid's warm_start values and the command line's overrides."""
    d = cfg.to_dict()
    d["method"] = {"name": "supervised"}
    d = config.merge(config.merge(d, config.dotted_tree(warm)), config.parse_overrides(overrides))
    d["train"].update(init_from="", init_same=False, seed=cfg.train.seed + seed_offset)
    if d["data"].get("split") == "random" and d["data"].get("split_seed") == -1:
        # the run's labeled subset, whatever the stage's seed: a second net's stage (seed + 1000) must not
        # see other labels than the run it starts
        d["data"]["split_seed"] = cfg.train.seed
    stage = config.from_dict(d)
    rid = run_id(stage.to_dict())
    name = f"supervised-{rid}"
    if rid not in stages:
        stages[rid] = GridRun(name, {}, {"train.seed": stage.train.seed, WARM_START: True}, stage, rid,
                              os.path.join(results, WARM_START, name), stage=True)
    return stages[rid].folder


# -- the command -------------------------------------------------------------------------------
def _final(run):
    ap = final_value(RunDir(run.folder).manifest().get("final") or {})
    return f"AP {ap:.3f}" if isinstance(ap, (int, float)) else ""


def run_grid(path, results, executor="local", scale=None, dry_run=False, retry_failed=False, jobs=None,
             threads=None, address=None, cpus=1, gpus=0, overrides=(), order=None, echo=print,
             gpus_per_run=1):
    """Expand, skip what is finished, run the rest; prints a line per run and a summary. Returns
    {run name: status} for every run of the grid. order: optional sort key for the pending runs."""
    runs = expand(path, results, scale, overrides)
    states = {r.name: r.status() for r in runs}
    todo = [r for r in runs if states[r.name] not in FINISHED and (retry_failed or states[r.name] != "failed")]
    if order:
        todo.sort(key=order)
    echo(f"grid {path}: {len(runs)} runs, {len(runs) - len(todo)} finished or failed before, {len(todo)} to run "
         f"-> {results}")
    if dry_run:
        for r in runs:
            mark = "run" if r in todo else states[r.name]
            echo(f"  {mark:<9} {r.name:<24} " + " ".join(f"{k}={v}" for k, v in r.varies.items()))
        return states
    if executor == "ray":  # refuse before anything is written: no Ray, or an address that does not answer
        try:
            import ray  # noqa: F401
        except ImportError:
            raise GridError("the ray executor needs Ray: pip install -e .[ray]")
        if address and address != "auto":
            check_answers(address)
    if executor == "local" and gpus_per_run > 1 and not visible_gpus():
        raise GridError(f"--gpus-per-run {gpus_per_run}: this machine has no visible GPU")
    os.makedirs(results, exist_ok=True)
    k = 0
    for phase in ([r for r in todo if r.stage], [r for r in todo if not r.stage]):  # stages first
        stream = (run_ray(phase, results, address, cpus, gpus) if executor == "ray"
                  else run_local(phase, results, jobs, threads, gpus_per_run))
        for k, (run, status, reason, seconds) in enumerate(stream, k + 1):
            states[run.name] = status
            detail = _final(run) if status in FINISHED else f"({reason})"
            echo(f"  [{k}/{len(todo)}] {(WARM_START + '/' if run.stage else '') + run.name:<24} {status:<9} "
                 f"{detail}  {seconds:.0f}s")
    counts = {s: sum(1 for v in states.values() if v == s) for s in sorted(set(states.values()))}
    echo("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return states

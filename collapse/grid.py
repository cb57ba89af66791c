"""Ablation grids: expansion into hashed runs, and executors (local processes, one per GPU; or Ray).

A grid file (configs/grids/*.yaml):

    base: ../demo.yaml            # the config every run starts from (path relative to the grid file)
    scales:                       # optional named sets of overrides; --scale picks one (default: the first)
      demo: {}
      full: {model.name: resnet18, data.input_size: [256, 192]}
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
                                  # (or per scale: {demo: {...}, full: {...}}; a scale without one: no stage)

A warm-started grid first runs its supervised stages, one per setting and seed, shared by every method of
that setting (RESULTS/warm_start/supervised-<run id>, skipped when done, like any run); a two-net method's
net 1 starts from the stage of seed + SECOND_NET_SEED (the original gives its two nets different
initialisations; with train.init_same both nets start from the seed's stage). A run whose own values set
train.init_from (say, "" for from scratch) keeps them.

Each resolved config is a run named `<method>-<run id>` (run id = hash of the resolved config), in
RESULTS. Done (and collapsed) runs are skipped, interrupted ones resume from their checkpoint, failed
ones are recorded with their reason and skipped unless retried. Every run is a `collapse train`
subprocess, so one crash cannot take the grid down; logs go to RESULTS/logs/.
"""
import ctypes
import dataclasses
import itertools
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import torch
import yaml

from . import config
from .data.splits import ensure_data
from .config import ConfigError
from .methods.registry import METHODS
from .runs import RunDir, atomic_write_text, final_value, run_id

FINISHED = ("done", "collapsed")
WARM_START = "warm_start"   # the folder of a grid's supervised stages, inside its results folder
SECOND_NET_SEED = 1000      # net 1 of a two-net method starts from the stage of seed + this


class GridError(ConfigError):
    pass


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
    axes = _mapping(raw, "axes", path)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{path}: axis '{key}' must be a non-empty list")
    variants = raw.get("variants") or [{}]
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise GridError(f"{path}: 'variants' must be a list of mappings of config keys")
    warm = _mapping(raw, "warm_start", path)
    if scales and warm and set(warm) <= set(scales):  # per scale: {demo: {...}, full: {...}}
        warm = warm.get(scale or next(iter(scales))) or {}
        if not isinstance(warm, dict):
            raise GridError(f"{path}: warm_start of scale '{scale}' must be a mapping of config keys")
    runs, stages, seen = [], {}, set()
    for variant in variants:
        for combo in itertools.product(*axes.values()):
            shared = {**(scale_values or {}), **_mapping(raw, "fixed", path), **dict(zip(axes, combo))}
            try:
                values = {**_read_by(shared, _method_name(base, overrides, {**shared, **variant})), **variant}
                cfg = config.load(base, overrides, values=values)
                if warm and "train.init_from" not in values:
                    nets = 1 if cfg.train.init_same else METHODS[cfg.method.name].nets
                    sources = [_stage(cfg, warm, overrides, k * SECOND_NET_SEED, results, stages) for k in range(nets)]
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


def _method_name(base, overrides, values):
    """The method a run will use: the command line's, else the grid's values', else the base config's."""
    over = config.parse_overrides(overrides).get("method", {})
    return over.get("name") or values.get("method.name") or config.load(base).method.name


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
    stage = config.from_dict(d)
    rid = run_id(stage.to_dict())
    name = f"supervised-{rid}"
    if rid not in stages:
        stages[rid] = GridRun(name, {}, {"train.seed": stage.train.seed, WARM_START: True}, stage, rid,
                              os.path.join(results, WARM_START, name), stage=True)
    return stages[rid].folder


# -- executing one run -------------------------------------------------------------------------
def _spec_file(results, run):
    """The run's resolved config as a file the `collapse train` subprocess reads (no `extends`)."""
    path = os.path.join(results, ".grid", f"{run.run_id}.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(run.cfg.to_dict(), sort_keys=False))
    return path


def _last_line(log_path):
    try:
        with open(log_path, errors="replace") as f:
            lines = [l.strip() for l in f if l.strip()]
    except OSError:
        return "no log"
    errors = [l for l in lines if l.startswith("collapse: error:") or "Error" in l.split(":")[0]]
    return (errors or lines or ["no output"])[-1][:500]


def die_with_parent():
    """Linux: the training subprocess is killed with its grid process, so a claim that turns stale (its
    grid process gone) never hides a trainer still writing the run folder. Called by the subprocess
    itself (COLLAPSE_DIE_WITH_PARENT=1): a preexec_fn is not safe with the executor's threads."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def execute(spec, folder, log_path, device_overrides, env=None):
    """Run one grid run as a `collapse train` subprocess; returns (status, reason). A run that fails
    gets status failed and the reason (its error line) in its manifest."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    args = [sys.executable, "-m", "collapse", "train", spec, *device_overrides, "train.progress=false",
            "--out", folder, "--quiet"]
    with open(log_path, "a") as log:
        env = {**(env or os.environ), "COLLAPSE_DIE_WITH_PARENT": "1"}
        rc = subprocess.call(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    m = RunDir(folder).manifest()
    if rc == 0 and m.get("status") in FINISHED:
        return m["status"], None
    reason = _last_line(log_path) if rc != 0 else f"ended with status {m.get('status')}"
    with open(spec) as f:
        cfg = yaml.safe_load(f)
    if not m:  # the run never started: still leave a record of what failed and why
        RunDir(folder).write_config(cfg)
    keep = m.get("status") == "failed" and m.get("reason")  # the trainer's own account is the better one
    RunDir(folder).update_manifest(status="failed", reason=m["reason"] if keep else reason, run_id=run_id(cfg),
                                   method=cfg["method"]["name"], exit_code=rc)
    return "failed", RunDir(folder).manifest().get("reason", reason)


# -- claims: two grid processes on one results folder never run the same run ---------------------
def _holder(path):
    try:
        with open(path) as f:
            host, pid = f.read().split()[:2]
        return host, int(pid)
    except (OSError, ValueError):
        return None, None


def _stale(path):
    """A claim is stale when its process (on this host) is gone. Claims from other hosts are trusted."""
    host, pid = _holder(path)
    if host is None:  # unreadable: a claimer died between creating and writing it, or it is being written
        return time.time() - os.path.getmtime(path) > 60 if os.path.exists(path) else True
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False


def claim(folder):
    """Claim a run for this process: RUN.claim created with O_EXCL (atomic on POSIX file systems) holding
    host and pid. A stale claim is moved aside under a unique name first, so only one recoverer wins."""
    path = folder.rstrip("/") + ".claim"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _stale(path):
                return False
            try:
                aside = f"{path}.stale-{os.getpid()}"
                os.rename(path, aside)
                os.remove(aside)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()} {time.time():.0f}\n")
        return True
    return False


def release(folder):
    path = folder.rstrip("/") + ".claim"
    if _holder(path) == (socket.gethostname(), os.getpid()):
        os.remove(path)


def _claimed_run(run, go):
    """Run `go()` holding the run's claim; (status, reason) or ('claimed', ...) if another process has it."""
    if not claim(run.folder):
        return "claimed", "running in another process"
    try:
        if run.status() in FINISHED:  # finished by another process since this one listed the grid
            return run.status(), None
        return go()
    finally:
        release(run.folder)


# -- executors ---------------------------------------------------------------------------------
def visible_gpus():
    """Physical ids of the GPUs this process may use (CUDA_VISIBLE_DEVICES respected), [] on CPU."""
    try:
        n = torch.cuda.device_count()
    except Exception:
        n = 0
    if n == 0:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in env.split(",") if x.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


def run_local(runs, results, jobs=None, threads=None):
    """Run the pending runs in subprocesses: one per visible GPU, or `jobs` at once on CPU (default 1)
    with `threads` CPU threads each (default: the cores divided among the jobs)."""
    for cfg in {(r.cfg.data.root, r.cfg.data.train_split, tuple(r.cfg.data.input_size)): r.cfg for r in runs}.values():
        try:
            ensure_data(cfg)  # once here, not by every parallel run at the same time
        except Exception:
            pass  # the runs themselves will fail with the reason
    gpus = visible_gpus()
    if gpus:
        slots = [dict(env={**os.environ, "CUDA_VISIBLE_DEVICES": g}, args=["train.device=cuda:0"]) for g in gpus]
    else:
        jobs = max(1, jobs or 1)
        per = threads or max(1, (os.cpu_count() or 1) // jobs)
        slots = [dict(env=None, args=["train.device=cpu", f"train.threads={per}"]) for _ in range(jobs)]
    free = queue.Queue()
    for s in slots:
        free.put(s)

    def one(run):
        slot = free.get()
        try:
            t0 = time.time()
            status, reason = _claimed_run(run, lambda: execute(
                _spec_file(results, run), run.folder, os.path.join(results, "logs", run.name + ".log"),
                slot["args"], slot["env"]))
            return run, status, reason, time.time() - t0
        finally:
            free.put(slot)

    with ThreadPoolExecutor(len(slots)) as pool:
        for done in as_completed([pool.submit(one, r) for r in runs]):  # submitted in order, reported as they end
            yield done.result()


def _check_answers(address, timeout=5.0):
    """Fail fast with one line when a Ray address does not accept connections (ray.init would retry long)."""
    target = address.split("://")[-1]
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError):
        raise GridError(f"the Ray address {address} does not answer (expected host:port of a running head node)")


def run_ray(runs, results, address=None, cpus=1, gpus=0):
    """Submit each pending run as a Ray task needing `cpus` CPUs and `gpus` GPUs, to the cluster at
    `address` or a local Ray instance. RESULTS must be on storage every node sees."""
    try:
        import ray  # an optional dependency (pip install -e .[ray]): imported where it is used
    except ImportError:
        raise GridError("the ray executor needs Ray: pip install -e .[ray]")
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=max(cpus, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise GridError(f"cannot reach a Ray cluster at {address or 'local'}: {str(e).splitlines()[0]}")

    @ray.remote(num_cpus=cpus, num_gpus=gpus)
    def task(spec, folder, log_path, device_overrides):
        t0 = time.time()
        status, reason = execute(spec, folder, log_path, device_overrides)
        return status, reason, time.time() - t0

    device = ["train.device=cuda:0"] if gpus else ["train.device=cpu", f"train.threads={cpus}"]
    pending = {}
    for r in runs:  # claimed by this driver process while its task runs anywhere in the cluster
        if not claim(r.folder):
            yield r, "claimed", "running in another process", 0.0
            continue
        pending[task.remote(_spec_file(results, r), os.path.abspath(r.folder),
                            os.path.abspath(os.path.join(results, "logs", r.name + ".log")), device)] = r
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ready[0])
            release(run.folder)
            status, reason, seconds = ray.get(ready[0])
            yield run, status, reason, seconds
    finally:
        for r in pending.values():
            release(r.folder)


# -- the command -------------------------------------------------------------------------------
def _final(run):
    ap = final_value(RunDir(run.folder).manifest().get("final") or {})
    return f"AP {ap:.3f}" if isinstance(ap, (int, float)) else ""


def run_grid(path, results, executor="local", scale=None, dry_run=False, retry_failed=False, jobs=None,
             threads=None, address=None, cpus=1, gpus=0, overrides=(), order=None, echo=print):
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
            _check_answers(address)
    os.makedirs(results, exist_ok=True)
    k = 0
    for phase in ([r for r in todo if r.stage], [r for r in todo if not r.stage]):  # stages first
        stream = (run_ray(phase, results, address, cpus, gpus) if executor == "ray"
                  else run_local(phase, results, jobs, threads))
        for k, (run, status, reason, seconds) in enumerate(stream, k + 1):
            states[run.name] = status
            detail = _final(run) if status in FINISHED else f"({reason})"
            echo(f"  [{k}/{len(todo)}] {(WARM_START + '/' if run.stage else '') + run.name:<24} {status:<9} "
                 f"{detail}  {seconds:.0f}s")
    counts = {s: sum(1 for v in states.values() if v == s) for s in sorted(set(states.values()))}
    echo("summary: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return states

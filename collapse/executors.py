"""Executing a grid's runs: each run a `collapse train` subprocess (one crash cannot take a grid down),
claimed by one process at a time (a claim file), on local processes (one per GPU, or several on CPU) or
as Ray tasks across machines."""
import os
import queue
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch
import yaml

from .data.splits import ensure_data
from .errors import ConfigError
from .runs import FINISHED, RunDir, atomic_write_text, run_id



class GridError(ConfigError):
    pass


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


def execute(spec, folder, log_path, device_overrides, env=None, options=()):
    """Run one grid run as a `collapse train` subprocess (options: its command-line options, --nproc);
    returns (status, reason). A run that fails gets status failed and the reason (its error line) in its
    manifest."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    args = [sys.executable, "-m", "collapse", "train", spec, *device_overrides, "train.progress=false",
            *options, "--out", folder, "--quiet"]
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


def gpu_slots(gpus, per_run):
    """The visible GPUs dealt out `per_run` to a run: each slot a CUDA_VISIBLE_DEVICES and, for several,
    a DDP run over them (--nproc). GPUs left over by the division stay idle."""
    if per_run < 1 or per_run > len(gpus):
        raise GridError(f"--gpus-per-run {per_run} does not fit the {len(gpus)} visible GPU(s)")
    groups = [gpus[i:i + per_run] for i in range(0, len(gpus) - per_run + 1, per_run)]
    return [dict(env={**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(g)}, args=["train.device=cuda"],
                 options=["--nproc", str(per_run)] if per_run > 1 else []) for g in groups]


def run_local(runs, results, jobs=None, threads=None, gpus_per_run=1):
    """Run the pending runs in subprocesses: one per visible GPU (or per `gpus_per_run` of them, one DDP
    run across each group), or `jobs` at once on CPU (default 1) with `threads` CPU threads each (default:
    the cores divided among the jobs)."""
    gpus = visible_gpus()
    if gpus:
        slots = gpu_slots(gpus, gpus_per_run)
    else:  # (several GPUs per run without any is refused by run_grid before anything is written)
        jobs = max(1, jobs or 1)
        per = threads or max(1, (os.cpu_count() or 1) // jobs)
        slots = [dict(env=None, args=["train.device=cpu", f"train.threads={per}"], options=[]) for _ in range(jobs)]
    for cfg in {(r.cfg.data.root, r.cfg.data.train_split, tuple(r.cfg.data.input_size)): r.cfg for r in runs}.values():
        try:
            ensure_data(cfg)  # once here, not by every parallel run at the same time
        except Exception:
            pass  # the runs themselves will fail with the reason
    free = queue.Queue()
    for s in slots:
        free.put(s)

    def one(run):
        slot = free.get()
        try:
            t0 = time.time()
            status, reason = _claimed_run(run, lambda: execute(
                _spec_file(results, run), run.folder, os.path.join(results, "logs", run.name + ".log"),
                slot["args"], slot["env"], slot["options"]))
            return run, status, reason, time.time() - t0
        finally:
            free.put(slot)

    with ThreadPoolExecutor(len(slots)) as pool:
        for done in as_completed([pool.submit(one, r) for r in runs]):  # submitted in order, reported as they end
            yield done.result()


def check_answers(address, timeout=5.0):
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
    def task(spec, folder, log_path, device_overrides, options):
        t0 = time.time()
        status, reason = execute(spec, folder, log_path, device_overrides, options=options)
        return status, reason, time.time() - t0

    device = ["train.device=cuda"] if gpus else ["train.device=cpu", f"train.threads={cpus}"]
    options = ["--nproc", str(int(gpus))] if gpus >= 2 else []  # whole GPUs beyond one: a DDP run over them
    pending = {}
    for r in runs:  # claimed by this driver process while its task runs anywhere in the cluster
        if not claim(r.folder):
            yield r, "claimed", "running in another process", 0.0
            continue
        pending[task.remote(_spec_file(results, r), os.path.abspath(r.folder),
                            os.path.abspath(os.path.join(results, "logs", r.name + ".log")), device, options)] = r
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

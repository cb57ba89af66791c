"""`collapse gpu-check`: the one command a person with a GPU runs (<= 8 minutes on one GPU), and the CPU half
of it anywhere. Writes OUT/gpu_check.json and OUT/gpu_check.md.

CPU half (any machine): every registered method's step audited against CUDA's rules (collapse/cuda_rules.py:
no host waits, no low-precision geometry) and bf16 geometry bit-equal to float32's.
GPU half: the same steps under torch.cuda.set_sync_debug_mode("error"); a CUDA step against a CPU step (same
weights, same batch, same random numbers: losses and gradients); `pytest -m cuda`; `collapse bench` for R18
SimpleBaseline 256x192 dual at 32+32, eager and compiled, and from the memory map, with the COCO-1K schedule's
projected time; a 2-GPU DDP run where two GPUs are visible. What a machine could not run is listed as owed."""
import json
import os
import platform
import subprocess
import sys
import time

import torch

from . import config, cuda_rules, runs
from .data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP32_TOLERANCE = 1e-4   # relative: a CUDA float32 step against the CPU's (TF32 off; summation order only)
# bf16 autocast against float32, relative error of the losses and the gradients. Measured on the CPU (the
# check's variants, width 8, batch 4+4, tests/test_gpu_check.py): up to 3.8e-3 on a loss term and 8.5e-3 on
# a net's gradient; CUDA's bf16 convolutions accumulate in float32 like the CPU's, so ~3.5x that is the bound
BF16_TOLERANCE = 3e-2
DUAL_BENCH = ["method.name=dual", "data.labeled=100", "model.pretrained=", "data.source=synthetic", "data.train_split=train",
              "data.val_split=val", "train.device=cuda"]


def environment():
    cuda = torch.cuda.is_available()
    return dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if cuda else None, gpus=torch.cuda.device_count() if cuda else 0,
                device=torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
                host=platform.node())


# -- the CPU half ----------------------------------------------------------------------------------------
def cpu_rules(root, out, echo):
    echo("CPU: every method's step against CUDA's rules (bf16 autocast, GPU branches)")
    report = cuda_rules.audit(root, os.path.join(out, "audit"), echo=echo)
    geometry = {v: {k: equal for k, (_, equal) in cuda_rules.geometry_across_precisions(
        root, os.path.join(out, "geometry"), v).items()} for v in ("dual", "multi_augs", "sspcm")}
    waits = sum(len(r["syncs"]) for r in report.values())
    low = sum(len(r["low_precision"]) for r in report.values())
    equal = all(all(g.values()) for g in geometry.values())
    echo(f"  {waits} host waits, {low} low-precision geometry sites over {len(report)} variants; "
         f"bf16 geometry bit-equal to float32's: {equal}")
    return dict(ok=waits == 0 and low == 0 and equal, waits=waits, low_precision=low, variants=report,
                geometry_bit_equal=geometry)


# -- the GPU half ----------------------------------------------------------------------------------------
def steps_in_error_mode(trainer, steps):
    """`steps` training steps with any host wait an error (torch.cuda.set_sync_debug_mode), but for the
    steps after which a staged recipe changes stage (Method.stage_steps: allowed to wait)."""
    stages = set(trainer.method.stage_steps())
    for _ in range(steps):
        torch.cuda.set_sync_debug_mode(0 if trainer.step + 1 in stages else "error")
        try:
            trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode(0)


def sync_debug(root, out, echo):
    """Every variant's steps on CUDA under set_sync_debug_mode('error') (stage-change steps excepted)."""
    from .train import Trainer
    echo("CUDA: every method's step under torch.cuda.set_sync_debug_mode('error')")
    errors = {}
    for v in cuda_rules.VARIANTS:
        tr = Trainer(cuda_rules.variant_config(root, v, device="cuda"), os.path.join(out, "sync", v.replace("/", "_")),
                     progress=False)
        try:
            for _ in range(2):  # warm-up: first calls allocate and build caches
                tr.train_step()
            torch.cuda.synchronize()
            steps_in_error_mode(tr, tr.cfg.train.steps - tr.step)  # through the staged recipes' stage changes
            torch.cuda.synchronize()
        except RuntimeError as e:
            errors[v] = str(e).splitlines()[0][:300]
        finally:
            tr.batches.close()
        echo(f"  {v:32s} {'ok' if v not in errors else errors[v]}")
    return dict(ok=not errors, errors=errors)


def host_drawn(trainer):
    """The trainer's random numbers from a host generator seeded as a CPU run's: a CUDA step then sees the
    numbers (rows, views, cutouts) a CPU step sees."""
    from .draws import Draws
    d = Draws(torch.Generator().manual_seed(trainer.cfg.train.seed), device=trainer.device)
    trainer.draws = trainer.batches.draws = trainer.batches.views.draws = d
    return trainer


def step_numbers(trainer):
    """One step's loss terms and every net's gradient (not applied) -> (terms, [flat gradient per net])."""
    n_lab, n_unl = trainer.local_batches
    lab = trainer.batches.labeled(n_lab)
    unl = trainer.batches.unlabeled(n_unl) if trainer.method.uses_unlabeled else None
    terms = trainer.method.losses(trainer.ctx, lab, unl)
    sum(v for k, v in terms.items() if not k.startswith("stat/")).backward()
    grads = [torch.cat([p.grad.flatten() for p in n.parameters() if p.grad is not None]).double().cpu()
             for n in trainer.nets]
    return {k: float(v.detach()) for k, v in terms.items()}, grads


def compare_steps(a, b):
    """Relative differences of two trainers' first-step numbers: the worst loss term and the worst net's
    gradient (L2 of the difference over L2 of the first)."""
    (ta, ga), (tb, gb) = step_numbers(a), step_numbers(b)
    loss = max(abs(ta[k] - tb[k]) / max(abs(ta[k]), 1e-12) for k in ta)
    grad = max(float((x - y).norm() / x.norm().clamp(min=1e-30)) for x, y in zip(ga, gb))
    return dict(loss_rel=loss, grad_rel=grad)


def cuda_vs_cpu(root, out, echo, variants=("dual", "sspcm", "multi_augs")):
    from .train import Trainer
    echo("CUDA vs CPU: one step, same weights, batch and random numbers")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    rows = {}
    try:
        for v in variants:
            make = lambda dev, prec: host_drawn(Trainer(cuda_rules.variant_config(root, v, f"train.precision={prec}",
                                                                                  device=dev),
                                                        os.path.join(out, "vs", f"{v.replace('/', '_')}-{dev}-{prec}"),
                                                        progress=False))
            for prec, tol in (("fp32", FP32_TOLERANCE), ("bf16", BF16_TOLERANCE)):
                d = compare_steps(make("cpu", "fp32"), make("cuda", prec))
                rows[f"{v} {prec}"] = dict(d, tolerance=tol, ok=max(d.values()) <= tol)
                echo(f"  {v:12s} {prec}: loss {d['loss_rel']:.1e}, gradient {d['grad_rel']:.1e} (tolerance {tol:g})")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return dict(ok=all(r["ok"] for r in rows.values()), steps=rows)


def cuda_tests(echo):
    echo("CUDA: pytest -m cuda")
    if not os.path.isdir(os.path.join(REPO, "tests")):
        return dict(ok=None, skipped="no tests/ beside the package (an installed copy)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
                       cwd=REPO, capture_output=True, text=True)
    summary = (r.stdout.strip().splitlines() or [""])[-1]
    echo(f"  {summary} ({time.perf_counter() - t0:.0f} s)")
    return dict(ok=r.returncode == 0, summary=summary, tail=r.stdout[-3000:] if r.returncode else "")


def speed(root, out, echo, steps=30, more=()):
    """R18 SimpleBaseline 256x192 dual 32+32 (configs/coco/r18_1k_dual.yaml on the synthetic set): steps/s,
    images/s, data share, MFU, peak memory; compiled and memory-map ratios; the COCO-1K schedule's time."""
    from . import bench, config
    echo("CUDA: collapse bench, R18 SimpleBaseline 256x192 dual 32+32")
    cfg = config.load(os.path.join(REPO, "configs/coco/r18_1k_dual.yaml"), [f"data.root={root}", *DUAL_BENCH, *more])
    eager = bench.bench(cfg, steps=steps + 10, batches=10, rounds=2, decode=0, echo=lambda s: echo("  " + s))
    compiled = bench.compile_race(cfg, steps=steps, rounds=2, echo=lambda s: echo("  " + s))
    memmap = bench.memmap_race(cfg, steps=steps, rounds=2, echo=lambda s: echo("  " + s))
    schedule = config.load(os.path.join(REPO, "configs/coco/r18_1k_dual.yaml")).train.steps
    best_ms = min(eager["step_ms"], compiled["compiled"])
    hours = schedule * best_ms / 1000 / 3600
    echo(f"  COCO-1K schedule: {schedule} steps x {best_ms:.1f} ms = {hours:.2f} h of training (evaluation not included)")
    return dict(eager={k: v for k, v in eager.items() if k not in ("batch_ms", "ratios")}, compiled=compiled,
                memmap=memmap, coco_1k_steps=schedule, coco_1k_hours=hours,
                goal_steps_per_s=78, steps_per_s=1000 / best_ms)


def two_gpus(root, out, echo):
    echo("CUDA: a 2-GPU DDP run (dual, synchronised BatchNorm)")
    folder = os.path.join(out, "ddp")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "collapse", "train", os.path.join(REPO, "configs/demo.yaml"),
                        f"data.root={root}", "method.name=dual", "model.sync_bn=true", "model.width=8", "train.steps=60",
                        "train.eval_every=60", "train.probe_every=30", "train.device=cuda", "--nproc", "2",
                        "--out", folder, "--quiet"], capture_output=True, text=True, cwd=REPO)
    m = runs.RunDir(folder).manifest()
    ok = r.returncode == 0 and m.get("status") == "done" and m.get("world_size") == 2
    echo(f"  {'done' if ok else 'FAILED: ' + r.stderr.strip()[-300:]} in {time.perf_counter() - t0:.0f} s")
    return dict(ok=ok, seconds=time.perf_counter() - t0, manifest_status=m.get("status"))


# -- the command -----------------------------------------------------------------------------------------
def gpu_check(out, echo=print):
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    env = environment()
    echo(f"collapse gpu-check on {env['device']} (torch {env['torch']}, CUDA {env['cuda']}, {env['gpus']} GPU(s)) -> {out}")
    small = os.path.join(out, "data", "synthetic-small")  # trained with configs/demo.yaml: the demo's world
    world = config.load(os.path.join(REPO, "configs/demo.yaml")).data.synthetic_world
    if not synthetic.is_prepared(small, world):
        synthetic.prepare(small, 300, 60, seed=3, workers=min(4, os.cpu_count() or 1), world=world)
    report = dict(environment=env, cpu_rules=cpu_rules(small, out, echo), owed=[])
    if env["gpus"]:
        report["sync_debug"] = sync_debug(small, out, echo)
        report["cuda_vs_cpu"] = cuda_vs_cpu(small, out, echo)
        report["cuda_tests"] = cuda_tests(echo)
        big = os.path.join(out, "data", "synthetic-bench")
        if not synthetic.is_prepared(big):
            synthetic.prepare(big, 600, 60, seed=3, workers=min(8, os.cpu_count() or 1))
        report["speed"] = speed(big, out, echo)
        if env["gpus"] >= 2:
            report["two_gpus"] = two_gpus(small, out, echo)
        else:
            report["owed"].append("a 2-GPU DDP run (this machine sees one GPU)")
    else:
        report["owed"] += ["every method's step under set_sync_debug_mode('error')", "CUDA vs CPU step numbers",
                           "pytest -m cuda", "bench: R18 dual 256x192 32+32 eager, compiled, memory map; MFU; "
                           "the COCO-1K schedule's time", "a 2-GPU DDP run"]
    report["seconds"] = time.perf_counter() - t0
    report["ok"] = all(v.get("ok") is not False for v in report.values() if isinstance(v, dict))
    runs.atomic_write_json(os.path.join(out, "gpu_check.json"), report)
    runs.atomic_write_text(os.path.join(out, "gpu_check.md"), markdown(report))
    echo(f"{'all checks passed' if report['ok'] else 'SOME CHECKS FAILED'} in {report['seconds']:.0f} s; owed: "
         f"{len(report['owed'])}; {os.path.join(out, 'gpu_check.md')}")
    return report


def markdown(r):
    e = r["environment"]
    lines = ["# collapse gpu-check", "",
             f"{e['device']}, {e['gpus']} GPU(s); torch {e['torch']}, CUDA {e['cuda']}, cuDNN {e['cudnn']}, "
             f"Python {e['python']}; {r['seconds']:.0f} s in all. Overall: {'pass' if r['ok'] else 'FAIL'}.", "",
             "| check | result |", "|---|---|"]
    c = r["cpu_rules"]
    lines.append(f"| CPU audit of every method's step (CUDA's rules) | {'pass' if c['ok'] else 'FAIL'}: {c['waits']} host "
                 f"waits, {c['low_precision']} low-precision geometry sites over {len(c['variants'])} variants; bf16 "
                 f"geometry bit-equal: {all(all(g.values()) for g in c['geometry_bit_equal'].values())} |")
    if "sync_debug" in r:
        s = r["sync_debug"]
        lines.append(f"| set_sync_debug_mode('error') over every method's step | {'pass' if s['ok'] else 'FAIL: ' + json.dumps(s['errors'])} |")
    if "cuda_vs_cpu" in r:
        for name, row in r["cuda_vs_cpu"]["steps"].items():
            lines.append(f"| CUDA vs CPU step, {name} | {'pass' if row['ok'] else 'FAIL'}: loss {row['loss_rel']:.1e}, "
                         f"gradient {row['grad_rel']:.1e} relative (tolerance {row['tolerance']:g}) |")
    if "cuda_tests" in r:
        lines.append(f"| pytest -m cuda | {r['cuda_tests'].get('summary') or r['cuda_tests'].get('skipped')} |")
    if "speed" in r:
        s = r["speed"]
        ea = s["eager"]
        mfu = f"{100 * ea['mfu']:.1f}%" if ea.get("mfu") else "n/a"
        lines += [f"| R18 dual 256x192 32+32, eager | {ea['steps_per_s']:.1f} steps/s, {ea['images_per_s']:.0f} images/s, "
                  f"data path {100 * ea['data_share']:.1f}% of a step, MFU {mfu}, peak {ea['peak_memory_gib']:.2f} GiB |",
                  f"| ... compiled | {s['compiled']['compiled']:.1f} ms/step vs eager {s['compiled']['eager']:.1f} "
                  f"({s['compiled']['ratio']:.2f}x) |",
                  f"| ... memory map read ahead | {s['memmap']['memory map']:.1f} ms/step vs resident "
                  f"{s['memmap']['resident']:.1f} ({s['memmap']['ratio']:.2f}x) |",
                  f"| best steps/s against the goal (78 on an H100-class GPU) | {s['steps_per_s']:.1f} "
                  f"({100 * s['steps_per_s'] / s['goal_steps_per_s']:.0f}% of the goal) |",
                  f"| COCO-1K schedule ({s['coco_1k_steps']} steps) | {s['coco_1k_hours']:.2f} h of training |"]
    if "two_gpus" in r:
        lines.append(f"| 2-GPU DDP run | {'pass' if r['two_gpus']['ok'] else 'FAIL'} ({r['two_gpus']['seconds']:.0f} s) |")
    if r["owed"]:
        lines += ["", "Owed (this machine could not run them):", *[f"- {o}" for o in r["owed"]]]
    return "\n".join(lines) + "\n"

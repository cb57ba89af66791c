"""`collapse evaluate RUN [key=value ...]`: a run's nets scored again under other evaluation settings
(the seed's valid.py), without training: each net, and for several nets their ensemble.

Only evaluation may change: eval.* (flip test, decoding, detection boxes, the metric), data.val_split and
data.val (another validation split or size), and where it runs (train.device, train.threads). Results go
to RUN/evaluations/<settings id>/ (settings.yaml, metrics.parquet, predictions/<net>.json), written into a
temporary folder and renamed into place: all or nothing, and the run's own files are never touched."""
import hashlib
import os
import shutil

import pandas as pd
import torch
import yaml

from . import config, runs
from .errors import ConfigError
from .data.splits import val_set, val_store
from .device import resolve_device
from .evaluate import evaluate, part_shares
from .identity import EVALUATION
from .methods import method_class
from .models import build_model, named_nets



def _run_config(run, overrides):
    """The run's resolved config with the overrides; a run written before methods owned their settings
    (config.yaml holds every method's) keeps only its own method's."""
    with open(run.file("config.yaml")) as f:
        raw = yaml.safe_load(f)
    try:
        own = set(config.method_settings(raw["method"]["name"]).__dataclass_fields__)
    except (KeyError, TypeError):
        raise ConfigError(f"{run.path}/config.yaml names no method")
    raw["method"] = {k: v for k, v in raw["method"].items() if k in own}
    return config.load(None, overrides, values=raw)


def reevaluate(folder, overrides=(), echo=print):
    run = runs.RunDir(folder)
    if not os.path.isfile(run.file("config.yaml")):
        raise ConfigError(f"{folder} is not a run folder (no config.yaml)")
    if not os.path.isfile(run.file("checkpoint.pt")):
        raise ConfigError(f"{folder} has no checkpoint.pt to evaluate")
    for item in overrides:
        if not item.startswith(EVALUATION):
            raise ConfigError(f"collapse evaluate changes evaluation settings only (eval.*, data.val_split, data.val, "
                              f"train.device, train.threads), not '{item.split('=')[0]}'")
    cfg = _run_config(run, overrides)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    settings = dict(eval=cfg.to_dict()["eval"], data=dict(val_split=cfg.data.val_split, val=cfg.data.val))
    sid = hashlib.sha1(yaml.safe_dump(settings, sort_keys=True).encode()).hexdigest()[:10]
    val = val_set(cfg, val_store(cfg), device)  # the nets' skeleton: the val split's (a net of another does not load)
    state = torch.load(run.file("checkpoint.pt"), map_location=device, weights_only=False)
    nets = []
    for sd in state["nets"][:method_class(cfg.method.name).net_count(cfg.method)]:
        net = build_model(cfg.model, val.skeleton.num_joints, cfg.data.heatmap_stride).to(device, memory_format=torch.channels_last)
        try:
            net.load_state_dict(sd)
        except RuntimeError:
            raise ConfigError(f"{folder}'s nets do not predict the {val.skeleton.num_joints} joints of data.val_split "
                              f"{cfg.data.val_split} ({val.skeleton.name})")
        nets.append(net)
    named = named_nets(nets)
    final = run.file("evaluations", sid)
    tmp = run.file("evaluations", f".tmp-{sid}-{os.getpid()}")
    rows, joints = [], []
    try:
        for name, net in named:
            metrics, results, errors = evaluate(net, val, cfg, parts=True)
            rows += [dict(net=name, name=k, value=v) for k, v in metrics.items()]
            runs.atomic_write_json(os.path.join(tmp, "predictions", f"{name}.json"), results)
            if errors is not None:
                joints.append(errors.assign(net=name))
        table = pd.DataFrame(rows, columns=["net", "name", "value"])
        runs.atomic_write_parquet(os.path.join(tmp, "metrics.parquet"), table)
        if joints:
            runs.atomic_write_parquet(os.path.join(tmp, "joints.parquet"), pd.concat(joints, ignore_index=True))
        runs.atomic_write_text(os.path.join(tmp, "settings.yaml"), yaml.safe_dump(
            dict(settings, run=os.path.basename(os.path.normpath(folder)), step=state["step"]), sort_keys=False))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    whole = table[table.name.str.count("/") == 0]  # per-part columns (AP/face ...) in the table below
    wide = whole.pivot(index="net", columns="name", values="value").loc[[n for n, _ in named], list(dict.fromkeys(whole.name))]
    echo(f"{folder} at step {state['step']}, " + ", ".join(f"{k}={v}" for k, v in settings["eval"].items())
         + f", val split {cfg.data.val_split} -> {final}")
    echo(wide.to_string(float_format=lambda v: f"{v:.4f}"))
    if joints:
        echo("per body part (net 0 / the run's net): " + "AP and PCK@0.1, and the shares of its labeled joints by error kind "
             "(Ronchi & Perona: good, jitter, inversion, swap, miss)")
        echo(part_table(table, pd.concat(joints, ignore_index=True), named[0][0]).to_string(float_format=lambda v: f"{v:.3f}"))
    return table


def part_table(metrics, joints, net):
    """Per body part of net `net`: its AP and PCK@0.1 (where measured), then its joints' error shares."""
    shares = part_shares(joints[joints.net == net]).set_index("part")
    m = metrics[metrics.net == net].set_index("name").value
    measured = {metric: [m.get(f"{metric}/{p}", float("nan")) for p in shares.index] for metric in ("AP", "PCK@0.1")}
    return shares.assign(**measured)[[*measured, *shares.columns]]

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
from .evaluate import evaluate
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
    rows = []
    try:
        for name, net in named:
            metrics, results = evaluate(net, val, cfg)
            rows += [dict(net=name, name=k, value=v) for k, v in metrics.items()]
            runs.atomic_write_json(os.path.join(tmp, "predictions", f"{name}.json"), results)
        table = pd.DataFrame(rows, columns=["net", "name", "value"])
        runs.atomic_write_parquet(os.path.join(tmp, "metrics.parquet"), table)
        runs.atomic_write_text(os.path.join(tmp, "settings.yaml"), yaml.safe_dump(
            dict(settings, run=os.path.basename(os.path.normpath(folder)), step=state["step"]), sort_keys=False))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wide = table.pivot(index="net", columns="name", values="value").loc[[n for n, _ in named], list(dict.fromkeys(table.name))]
    echo(f"{folder} at step {state['step']}, " + ", ".join(f"{k}={v}" for k, v in settings["eval"].items())
         + f", val split {cfg.data.val_split} -> {final}")
    echo(wide.to_string(float_format=lambda v: f"{v:.4f}"))
    return table

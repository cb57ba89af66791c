"""A run's identity, in one place: which config keys name a run (its id), which only say how it is executed,
which do not make another setting in analysis, which `collapse evaluate` may change, and the one upgrade rule
for keys added after runs were first named, shared by run ids and the claims engine."""
import functools
import hashlib
import os

import yaml

# how a run is executed, not what it computes: these keys never change a run's identity (so a run resumes on
# another device, with more threads or another checkpoint period), and never make another setting in analysis
EXECUTION = ("train.device", "train.threads", "train.progress", "train.checkpoint_every", "train.tensorboard",
             "train.dist_timeout_s")

# keys added after runs were first named by their configs, with the value runs made before the key ran with:
# at that value a key leaves a run's id as it was before it existed (results folders made earlier are still
# found and resumed by grids), and analysis gives an older run that lacks the key that value
LATER_KEYS = {"data.resident_gb": 8.0, "model.sync_bn": False, "eval.metric": "oks", "method.correction": "position",
              "method.teacher": "eval", "data.synthetic_world": 1}  # mean_teacher's default is now reference; runs before it ran eval

# keys that do not make another setting in analysis: how a run was executed, whether it was stopped at its
# collapse, and train.init_same (a two-net method's factor, shown in its label, whose runs share the seed's
# supervised reference)
NOT_SETTINGS = EXECUTION + ("train.stop_on_collapse", "train.collapse_ratio", "train.init_same")

# what `collapse evaluate` may change in a finished run's config (prefixes of key=value overrides)
EVALUATION = ("eval.", "data.val_split=", "data.val=", "train.device=", "train.threads=")


def run_id(resolved_config: dict) -> str:
    """Short hash of the resolved config, without the keys of EXECUTION (nor LATER_KEYS at their earlier values)."""
    ident = {k: v for k, v in resolved_config.items() if k not in ("out",)}
    ident["train"] = {k: v for k, v in ident.get("train", {}).items() if f"train.{k}" not in EXECUTION}
    for key, default in LATER_KEYS.items():
        section, name = key.split(".")
        if section in ident and ident[section].get(name, default) == default:
            ident[section] = {k: v for k, v in ident[section].items() if k != name}
    if ident["train"].get("init_from"):  # a source by its last two path parts (a grid's: warm_start/<method>-<id>),
        ident["train"]["init_from"] = ",".join(  # so a results folder can move without changing its runs' ids
            "/".join(os.path.normpath(p.strip()).split(os.sep)[-2:]) for p in ident["train"]["init_from"].split(","))
    text = yaml.safe_dump(ident, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def flatten(d, prefix=""):
    """A nested config as {dotted key: value}; lists become tuples (list-like, and hashable, so analysis can
    group and compare settings on them)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = tuple(v) if isinstance(v, list) else v
    return out


@functools.lru_cache(maxsize=1)
def _shared_defaults():
    from .config import Config
    return {k: v for k, v in flatten(Config().to_dict()).items() if not k.startswith("method.")}


def with_defaults(flat):
    """A run's flattened config with every key it lacks filled in (the one upgrade rule: a key added after the
    run was made takes the value the run ran with, LATER_KEYS, else today's default; never is a key dropped
    for other runs): the shared sections from collapse.config, method.* from the run's own method's settings.
    Another trainer's run (collapse.monitor: no method of this toolkit) is left as it is."""
    import dataclasses
    from .methods.registry import METHODS
    name = flat.get("method.name")
    if name not in METHODS:
        return flat
    own = {f.name: f for f in dataclasses.fields(METHODS[name].Settings)}
    out = dict(flat)
    for key, before in LATER_KEYS.items():
        if not key.startswith("method.") or key[7:] in own:
            out.setdefault(key, before)
    out = _shared_defaults() | out
    for f in own.values():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.setdefault(f"method.{f.name}", tuple(default) if isinstance(default, list) else default)
    return out

"""Typed configuration: dataclasses, YAML files that extend a base, dotted command-line overrides.

`load(path, overrides)` reads a YAML file (which may name another file under `extends:`), applies
`key.sub=value` overrides (values parsed as YAML), and validates every key and type against the schema.
Any mistake raises ConfigError naming the key; the CLI turns it into one line and exit code 2.
"""
import dataclasses
import os
import typing
from dataclasses import dataclass, field

import yaml

from .errors import ConfigError  # noqa: F401  (re-exported: the config's error)


@dataclass
class DataConfig:
    source: str = "synthetic"        # synthetic | coco: where `root` came from
    root: str = "data/synthetic"     # folder with annotations/person_keypoints_{split}.json and images
    train_split: str = "train"
    val_split: str = "val"
    synthetic_train: int = 6000      # images generated when the synthetic set is prepared automatically
    synthetic_val: int = 400
    synthetic_seed: int = 0
    synthetic_world: int = 1         # 1: the demo's world so far | 2: every labeled joint has a cue (ears drawn, larger
                                     # eye and nose marks, faces turned away unlabeled); collapse/data/synthetic.py
    input_size: typing.List[int] = field(default_factory=lambda: [64, 48])  # crop height, width
    heatmap_stride: int = 2
    sigma: float = 1.5               # Gaussian target sigma in heatmap pixels
    store_margin: float = 1.25       # stored crops cover this much more than the input crop
    resident_gb: float = 8.0         # pools up to this size live on the device; larger ones are read ahead from the
                                     # memory map (their rows drawn from a generator of their own)
    labeled: int = 300               # N train instances are labeled (-1: all) ...
    split: str = "first"             # ... the first N in file order (the paper's code) | random (seeded)
    split_seed: int = 0              # data.split random: the shuffle's seed (-1: the run's train.seed)
    unlabeled: int = -1              # size of the unlabeled pool, the rest of the train instances (-1: all)
    unlabeled_split: str = ""        # or a separate split as the pool, e.g. unlabeled2017 (detection boxes)
    val: int = -1                    # validation instances evaluated (-1: all)


@dataclass
class AugmentConfig:
    rotation: float = 30.0           # easy view: rotation ~ clip(N(0, r^2), -2r, 2r) with probability rot_prob
    rot_prob: float = 0.6
    scale: float = 0.25              # easy view: scale ~ clip(N(1, s^2), 1-s, 1+s)
    flip: float = 0.5
    hard_rotation: float = 30.0      # extra affine composed on the easy view for the hard view
    hard_rot_prob: float = 0.8
    hard_scale: float = 0.25


@dataclass
class ModelConfig:
    name: str = "tiny"               # tiny | resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | hrnet_w32 | hrnet_w48
    width: int = 32                  # tiny net base channels
    pretrained: str = ""             # resnet: a torchvision weights name (IMAGENET1K_V1), file or URL; hrnet: the
                                     # official checkpoint's file or URL ('' = random init)
    sync_bn: bool = False            # multi-process runs: BatchNorm statistics of the global batch, not each rank's


@dataclass
class EvalConfig:
    flip_test: bool = False          # average with the mirrored crop's heatmaps (joints swapped)
    decode: str = "argmax"           # argmax (+ quarter-pixel shift) | dark (Taylor refinement on the log-heatmap)
    boxes: str = ""                  # '' = ground-truth boxes; or a detection-results file (COCO format) for val
    box_score: float = 0.0           # detections below this score are dropped
    oks_nms: float = 0.9             # with detection boxes: OKS-NMS threshold per image
    metric: str = "oks"              # oks: COCO OKS AP (and PCK@0.1) | pckh: PCKh@0.5 and @0.1 by head size (MPII)


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_labeled: int = 32
    batch_unlabeled: int = 32
    lr: float = 1e-3
    lr_steps: typing.List[int] = field(default_factory=list)  # MultiStepLR milestones (x0.1), in steps
    eval_every: int = 500
    checkpoint_every: int = 0        # steps between checkpoints (0: at each evaluation only)
    log_every: int = 50
    probe_every: int = 100           # response probes (0 = off)
    probe_size: int = 128            # crops per probe set (unlabeled, val)
    seed: int = 0
    init_from: str = ""              # start from trained nets: a finished run folder or a checkpoint file, one for
                                     # every net or one per net separated by commas ('' = random init); fresh optimizer
    init_same: bool = False          # two-net methods: both nets start from identical weights (one random draw, or
                                     # in a warm-started grid one supervised stage) instead of one each
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    threads: int = 0                 # torch CPU threads (0 = torch's default)
    dist_timeout_s: int = 1800       # DDP: the longest any rank waits in a collective (rank 0's evaluation included)
    compile: bool = False            # every pass of a step through torch.compile (ctx.forward)
    compile_mode: str = "default"    # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    precision: str = "auto"          # auto (bf16 autocast on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16
    progress: bool = True
    tensorboard: bool = False        # also write RUN/tensorboard/ (losses, lr, AP, collapse index, response histograms)
    stop_on_collapse: bool = False   # end a run once its collapse index stays below collapse_ratio (status collapsed)
    collapse_ratio: float = 0.5      # collapse index = unlabeled mean max response / the run's own peak so far


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: typing.Any = None        # the chosen method's own settings dataclass (collapse/methods), by method.name
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.method is None:
            self.method = method_settings("supervised")()

    def to_dict(self):
        return dataclasses.asdict(self)


def method_settings(name):
    """The settings dataclass of method `name`. Imported here, not at the top: collapse.methods imports
    torch and this module (ConfigError); the config stays importable on its own and quick for --help."""
    from .methods.registry import method_class
    from . import methods  # noqa: F401  (registers every method)
    return method_class(name).Settings


def _check_type(key, value, typ):
    origin = typing.get_origin(typ)
    if origin in (list, typing.List):
        (inner,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' must be {typ.__name__}, got {value!r}")
    return value


def _check_mapping(key, values):
    if not isinstance(values, dict):
        raise ConfigError(f"config key '{key}' must be a mapping, got {values!r}")


def _build(cls, values, prefix=""):
    _check_mapping(prefix.rstrip("."), values)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            if prefix == "method.":
                raise ConfigError(f"method '{values.get('name', 'supervised')}' has no setting '{k}' "
                                  f"(it reads: {', '.join(sorted(names))})")
            raise ConfigError(f"unknown config key '{prefix}{k}'")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        typ = hints[f.name]
        if f.name == "method" and cls is Config:
            _check_mapping("method", values["method"])
            name = _check_type("method.name", values["method"].get("name", "supervised"), str)
            kwargs["method"] = _build(method_settings(name), values["method"], "method.")
        elif dataclasses.is_dataclass(typ):
            kwargs[f.name] = _build(typ, values[f.name], f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _check_type(prefix + f.name, values[f.name], typ)
    return cls(**kwargs)


def merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_mapping(path, kind="config", holds="config keys", error=ConfigError):
    """A YAML file that must hold a mapping; every problem is one `error` naming the file."""
    if not os.path.isfile(path):
        raise error(f"{kind} file not found: {path}")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise error(f"{path} is not valid YAML: {str(e).splitlines()[0]}")
    if not isinstance(raw, dict):
        raise error(f"{path} must hold a mapping of {holds}")
    return raw


def _read_yaml(path, seen=()):
    if os.path.abspath(path) in seen:
        raise ConfigError(f"config files extend each other in a loop: {path}")
    raw = read_mapping(path, "config", "config keys")
    parent = raw.pop("extends", None)
    if parent:
        parent_path = os.path.join(os.path.dirname(path), parent)
        raw = merge(_read_yaml(parent_path, seen + (os.path.abspath(path),)), raw)
    return raw


def parse_overrides(overrides):
    """["method.name=dual", "train.seed=1"] -> {"method": {"name": "dual"}, "train": {"seed": 1}} (values as YAML)."""
    flat = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, text = item.split("=", 1)
        try:
            flat[key] = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            flat[key] = text
    return dotted_tree(flat)


def validate(cfg: Config):
    d, t = cfg.data, cfg.train
    if len(d.input_size) != 2 or min(d.input_size) <= 0:
        raise ConfigError("config key 'data.input_size' must be [height, width] with positive values")
    if any(s % d.heatmap_stride for s in d.input_size):
        raise ConfigError("config key 'data.heatmap_stride' must divide both sides of data.input_size")
    for key, value in (("train.steps", t.steps), ("train.batch_labeled", t.batch_labeled),
                       ("train.eval_every", t.eval_every), ("train.log_every", t.log_every),
                       ("train.dist_timeout_s", t.dist_timeout_s),
                       ("data.sigma", d.sigma), ("train.lr", t.lr)):
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    if t.checkpoint_every < 0 or t.probe_every < 0:
        raise ConfigError("config keys 'train.checkpoint_every' and 'train.probe_every' must be >= 0")
    if d.synthetic_world not in (1, 2):
        raise ConfigError(f"config key 'data.synthetic_world' must be 1 or 2, got {d.synthetic_world}")
    if d.split not in ("first", "random"):
        raise ConfigError(f"config key 'data.split' must be first or random, got '{d.split}'")
    if d.split_seed < -1:
        raise ConfigError(f"config key 'data.split_seed' must be >= 0, or -1 (the run's seed), got {d.split_seed}")
    if d.labeled == 0 or d.labeled < -1:
        raise ConfigError(f"config key 'data.labeled' must be positive or -1 (all), got {d.labeled}")
    if t.compile_mode not in ("default", "reduce-overhead", "max-autotune"):
        raise ConfigError(f"config key 'train.compile_mode' must be default, reduce-overhead or max-autotune, got '{t.compile_mode}'")
    if t.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"config key 'train.precision' must be auto, fp32 or bf16, got '{t.precision}'")
    if cfg.eval.decode not in ("argmax", "dark"):
        raise ConfigError(f"config key 'eval.decode' must be argmax or dark, got '{cfg.eval.decode}'")
    if cfg.eval.metric not in ("oks", "pckh"):
        raise ConfigError(f"config key 'eval.metric' must be oks or pckh, got '{cfg.eval.metric}'")
    cfg.method.check(cfg)
    if d.store_margin < 1:
        raise ConfigError("config key 'data.store_margin' must be >= 1")
    if d.resident_gb < 0:
        raise ConfigError(f"config key 'data.resident_gb' must be >= 0, got {d.resident_gb}")
    return cfg


def from_dict(values) -> Config:
    return validate(_build(Config, values))


def dotted_tree(flat):
    """{"method.name": "dual", "train.seed": 1} -> {"method": {"name": "dual"}, "train": {"seed": 1}}."""
    tree = {}
    for key, value in flat.items():
        node = tree
        *parents, last = str(key).split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"key '{key}' conflicts with another key")
        node[last] = value
    return tree


def load(path=None, overrides=(), values=None) -> Config:
    """The config of YAML file `path`, then `values` (a dict of dotted keys), then `key=value` overrides."""
    raw = _read_yaml(path) if path else {}
    if values:
        raw = merge(raw, dotted_tree(values))
    raw = merge(raw, parse_overrides(overrides))
    return from_dict(raw)

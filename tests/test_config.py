import os

import pytest

from collapse import config
from collapse.config import ConfigError
from conftest import REPO


def test_base_and_demo_load_and_overrides_apply(tmp_path):
    cfg = config.load("configs/demo.yaml", ["method.name=supervised", "train.steps=7", "train.lr=1e-4",
                                            "data.input_size=[32,24]"])
    assert cfg.train.steps == 7 and cfg.train.lr == 1e-4 and cfg.data.input_size == [32, 24]
    assert cfg.model.name == "tiny"


@pytest.mark.parametrize("override, key", [
    ("train.stepz=3", "train.stepz"),
    ("nope.x=1", "nope"),
    ("train.steps=abc", "train.steps"),
    ("train.steps=1.5", "train.steps"),
    ("train.compile=3", "train.compile"),
    ("data.input_size=7", "data.input_size"),
    ("data.input_size=[64,x]", "data.input_size[1]"),
    ("train=3", "train"),
    ("train.steps=0", "train.steps"),
])
def test_bad_keys_and_types_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        config.load("configs/demo.yaml", [override])
    assert f"'{key}'" in str(e.value)


def test_extends_and_unknown_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\ntrain: {steps: 5}\n")
    (tmp_path / "b.yaml").write_text("train: {steps: 9, lr: 0.01}\n")
    cfg = config.load(str(tmp_path / "a.yaml"))
    assert cfg.train.steps == 5 and cfg.train.lr == 0.01
    with pytest.raises(ConfigError, match="not found"):
        config.load(str(tmp_path / "missing.yaml"))
    (tmp_path / "c.yaml").write_text("extends: c.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        config.load(str(tmp_path / "c.yaml"))


def test_every_shipped_config_loads():
    import glob
    paths = sorted(glob.glob("configs/*.yaml") + glob.glob("configs/methods/*.yaml") + glob.glob("configs/coco/*.yaml")
                   + glob.glob("configs/mpii/*.yaml"))
    assert len(paths) >= 15
    names = {config.load(p).method.name for p in paths}
    from collapse.methods import METHODS
    assert names == set(METHODS)  # every method has a shipped config


def test_keys_added_later_leave_the_ids_of_earlier_runs_alone():
    import copy
    from collapse.identity import LATER_KEYS, run_id
    # the demo's dual as configs/demo.yaml set it before 2026-12 (first-N split, automatic precision, world 1)
    old_demo = ["method.name=dual", "data.split=first", "data.split_seed=0", "train.precision=auto",
                "data.root=data/synthetic", "data.synthetic_world=1", "data.sigma=1.5"]
    cfg = config.load("configs/demo.yaml", old_demo).to_dict()
    assert run_id(cfg) == "4283931faa"  # the id this run had before data.resident_gb and model.sync_bn existed
    older = copy.deepcopy(cfg)
    for key in LATER_KEYS:
        section, name = key.split(".")
        older[section].pop(name, None)  # a method key is in its own method's settings only
    assert run_id(older) == run_id(cfg)
    for override in ("data.resident_gb=0", "model.sync_bn=true"):  # away from the default they are the run's own
        assert run_id(config.load("configs/demo.yaml", [*old_demo, override]).to_dict()) != run_id(cfg)


def test_base_yaml_states_every_default_as_the_schema_does():
    """Defaults are written in collapse/config.py (and each method's Settings); configs/base.yaml lists them
    for readers: key by key, the two agree (a default changed in one place only fails here)."""
    import yaml
    from collapse.config import Config
    from collapse.identity import flatten
    with open(os.path.join(REPO, "configs", "base.yaml")) as f:
        written = flatten(yaml.safe_load(f))
    schema = flatten(Config().to_dict())
    assert set(written) == set(schema), set(written) ^ set(schema)
    differ = {k: (written[k], schema[k]) for k in schema if written[k] != schema[k]}
    assert not differ, differ

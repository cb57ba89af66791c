"""Grids: expansion and hashing, resume after an interruption, failed runs, the Ray executor."""
import dataclasses
import json
import os

import pytest

from collapse.cli import main
from collapse.grid import GridError, expand, run_grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {"model.width": 8, "train.steps": 4, "train.eval_every": 4, "train.probe_every": 2, "train.probe_size": 8,
        "train.log_every": 2}


def write_grid(tmp_path, synth_root, variants, axes, name="g.yaml"):
    import yaml
    path = tmp_path / name
    fixed = {**TINY, "data.root": synth_root}
    path.write_text(yaml.safe_dump(dict(base=os.path.abspath("configs/demo.yaml"), fixed=fixed,
                                        variants=variants, axes=axes)))
    return str(path)


def test_expansion_and_hashing(tmp_path, synth_root):
    g = write_grid(tmp_path, synth_root, [{"method.name": "supervised"}, {"method.name": "consistency"}],
                   {"method.unsup_weight": [1.0, 2.0], "train.seed": [0, 1]})
    runs = expand(g, str(tmp_path / "r"))
    # supervised reads no unsup_weight, so the axis does not apply to it: one run per seed: 2 + 4
    assert len(runs) == 6 and len({r.run_id for r in runs}) == 6
    assert [r.cfg.method.name for r in runs].count("supervised") == 2
    again = expand(g, str(tmp_path / "r"))
    assert [r.run_id for r in again] == [r.run_id for r in runs]  # same config -> same id
    one = expand(g, str(tmp_path / "r"), overrides=["train.lr=0.002"])
    assert not {r.run_id for r in one} & {r.run_id for r in runs}  # any change -> new ids
    assert all(r.folder.endswith(f"{r.cfg.method.name}-{r.run_id}") for r in runs)
    # how a run is executed (device, threads, checkpoint period) does not change its identity: it resumes
    dev = expand(g, str(tmp_path / "r"), overrides=["train.threads=1", "train.device=cpu", "train.checkpoint_every=7"])
    assert [r.run_id for r in dev] == [r.run_id for r in runs]
    for bad, msg in (({"train.seed": []}, "non-empty"), ({"train.stepz": [1]}, "unknown config key")):
        with pytest.raises(GridError, match=msg):
            expand(write_grid(tmp_path, synth_root, [{}], bad, "bad.yaml"), str(tmp_path / "r"))
    # a variant's own key its method does not read is a mistake, named
    with pytest.raises(GridError, match="method 'dual' has no setting 'tau'"):
        expand(write_grid(tmp_path, synth_root, [{"method.name": "dual", "method.tau": 0.5}], {}, "bad.yaml"),
               str(tmp_path / "r"))


def test_a_setting_a_method_does_not_read_leaves_its_run_id_unchanged(tmp_path, synth_root):
    """Every other method's every setting, swept as an axis, leaves each method with the one run id it has
    without the axis; a setting it reads gives it new ones."""
    from collapse.config import method_settings
    from collapse.methods import METHODS
    fields = {n: {f.name: f.default for f in dataclasses.fields(method_settings(n))} for n in METHODS}
    for name in METHODS:
        plain = {r.run_id for r in expand(write_grid(tmp_path, synth_root, [{"method.name": name}], {}), str(tmp_path))}
        for other, settings in fields.items():
            for key, default in settings.items():
                if key in fields[name] or not isinstance(default, (int, float)) or isinstance(default, bool):
                    continue
                swept = expand(write_grid(tmp_path, synth_root, [{"method.name": name}],
                                          {f"method.{key}": [default, default + 1]}), str(tmp_path))
                assert {r.run_id for r in swept} == plain, (name, other, key)
        read = [k for k, v in fields[name].items() if k not in ("name", "sup_weight") and type(v) in (int, float)]
        for key in read:
            v = fields[name][key]
            for other_value in ([v / 2] if type(v) is float else [v + 1, v - 1]):  # the first valid one (nets: 2 -> 1)
                try:
                    swept = expand(write_grid(tmp_path, synth_root, [{"method.name": name}],
                                              {f"method.{key}": [other_value]}), str(tmp_path))
                    break
                except GridError:
                    continue
            assert {r.run_id for r in swept}.isdisjoint(plain), (name, key)


def test_interrupted_grid_runs_only_what_is_missing_and_failed_runs_are_recorded(tmp_path, synth_root, capsys):
    g = write_grid(tmp_path, synth_root, [{"method.name": "supervised"}, {"method.name": "easy_hard"},
                                          {"method.name": "supervised", "data.labeled": 10 ** 6}],
                   {"train.seed": [0]})
    out = str(tmp_path / "results")
    states = run_grid(g, out, jobs=2, threads=1)
    assert sorted(states.values()) == ["done", "done", "failed"]
    failed = [n for n, s in states.items() if s == "failed"][0]
    m = json.load(open(os.path.join(out, failed, "manifest.json")))
    assert m["status"] == "failed" and "larger than" in m["reason"] and m["exit_code"] == 2
    # interrupt: one run loses its result (as if killed before it finished), the other is kept
    sup, eh = \
        [n for n, s in states.items() if s == "done"]
    kept = json.load(open(os.path.join(out, sup, "manifest.json")))
    os.remove(os.path.join(out, eh, "manifest.json"))
    capsys.readouterr()
    states = run_grid(g, out)
    text = capsys.readouterr().out
    assert "1 to run" in text and "[1/1]" in text and "summary: 2 done, 1 failed" in text
    assert json.load(open(os.path.join(out, sup, "manifest.json")))["updated"] == kept["updated"]
    # --dry-run lists the runs and runs nothing
    assert main(["grid", g, "--out", out, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("done") == 2 and "failed" in listed and "0 to run" in listed


def test_grid_file_mistakes_are_one_line(tmp_path, capsys):
    (tmp_path / "g.yaml").write_text("base: ../nope.yaml\naxes: {train.seed: [0]}\n")
    assert main(["grid", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["grid", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_ray_executor_runs_a_small_grid_on_a_local_ray(tmp_path, synth_root, capsys):
    ray = pytest.importorskip("ray")
    g = write_grid(tmp_path, synth_root, [{"method.name": "supervised"}, {"method.name": "consistency"}],
                   {"train.seed": [0]})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        states = run_grid(g, str(tmp_path / "r"), executor="ray", cpus=1)
    finally:
        ray.shutdown()
    assert sorted(states.values()) == ["done", "done"]
    for name in states:
        assert json.load(open(tmp_path / "r" / name / "manifest.json"))["status"] == "done"


def test_shipped_grids_expand(tmp_path):
    sizes = {"demo": 9, "failed_attempts": 85, "dual_vs_single": 45, "imbalance": 45, "comparison": 135,
             "later_recipes": 40, "later_factors": 35, "consistency_at_1k_w32": 9}
    for name, n in sizes.items():
        runs = expand(f"configs/grids/{name}.yaml", str(tmp_path))
        assert len(runs) == n, name
    full = expand("configs/grids/failed_attempts.yaml", str(tmp_path), scale="full")
    assert full[0].cfg.model.name == "resnet18" and full[0].cfg.data.input_size == [256, 192]
    assert not [r for r in full if r.stage]                                       # the full scale has no stage


def test_the_warm_started_grids_state_their_stage_once_and_share_it(tmp_path):
    """Every warm-started demo-scale grid names configs/grids/warm_start.yaml: on one results folder their
    seed-0 supervised stages are one run (the same folder name, so it trains once)."""
    stages = {}
    for name in ("demo", "failed_attempts", "dual_vs_single", "later_recipes", "later_factors", "mean_teacher"):
        assert "warm_start.yaml" in open(f"configs/grids/{name}.yaml").read(), name
        stages[name] = {r.name for r in expand(f"configs/grids/{name}.yaml", str(tmp_path)) if r.stage}
        assert len(stages[name]) >= 1, name
    shared = set.intersection(*stages.values())
    assert shared, stages
    stage = next(r for r in expand("configs/grids/demo.yaml", str(tmp_path)) if r.stage and r.name in shared)
    assert stage.cfg.train.steps == 1200 and stage.cfg.train.lr_steps == [1000]  # warm_start.yaml's values


@pytest.mark.parametrize("grid", ["comparison", "dual_vs_single", "failed_attempts", "imbalance"])
def test_full_scales_extend_the_coco_base_config(grid, tmp_path):
    """The grids' full scales start from configs/coco/r18_base.yaml (ImageNet weights, its evaluation and
    checkpoint periods) instead of restating it; the 30-epoch ones use r18_1k_dual.yaml's LR schedule."""
    from collapse import config
    base = config.load(os.path.join(REPO, "configs", "coco", "r18_base.yaml"))
    dual = config.load(os.path.join(REPO, "configs", "coco", "r18_1k_dual.yaml"))
    runs = expand(os.path.join(REPO, "configs", "grids", f"{grid}.yaml"), str(tmp_path), scale="full")
    for r in runs:
        assert (r.cfg.data, r.cfg.model.pretrained, r.cfg.train.eval_every) == \
            (dataclasses.replace(base.data, labeled=r.cfg.data.labeled, sigma=r.cfg.data.sigma),
             base.model.pretrained, base.train.eval_every)
        if r.cfg.train.steps == dual.train.steps:
            assert r.cfg.train.lr_steps == dual.train.lr_steps


def test_each_seed_draws_its_own_labeled_subset_and_a_second_nets_stage_keeps_the_runs():
    """data.split_seed -1 (the study grids' setting): the labeled subset follows train.seed; the stage that
    dual's net 1 starts from (seed + 1000) keeps the run's own subset, so no net sees other labels."""
    from collapse import config
    from collapse.data.splits import labeled_order
    cfg = lambda seed, split_seed=-1: config.load("configs/demo.yaml", [f"train.seed={seed}", f"data.split_seed={split_seed}"])
    assert cfg(0).data.split == "random" and cfg(0).train.precision == "fp32"  # pinned: the same class of numbers anywhere
    assert (labeled_order(cfg(3), 500) == labeled_order(cfg(0, 3), 500)).all()
    assert not (labeled_order(cfg(3), 500)[:100] == labeled_order(cfg(4), 500)[:100]).all()
    runs = expand("configs/grids/demo.yaml", "/nonexistent", overrides=["train.seed=2"])
    stages = [r for r in runs if r.stage]
    assert sorted(r.cfg.train.seed for r in stages) == [2, 1002]
    assert all(r.cfg.data.split_seed == 2 for r in stages)

"""collapse.monitor in other people's trainers: a small heatmap net trained ~40 iterations under Lightning's
Trainer and under mmengine's Runner with the adapters; probes at exactly the requested steps; analysis reads
the folders; the detector flags a run driven to collapse (unlabeled predictions pushed to background) and
not a healthy one; a probe leaves the model's mode, gradients and statistics as they were."""
import json
import os

import pandas as pd
import pytest
import torch

import analysis
from collapse import config
from collapse.heatmaps import gaussian_targets
from collapse.models import build_model
from collapse.monitor import CollapseMonitor, MonitorError, coco_probe_set

STEPS, EVERY, PUSH_FROM = 40, 4, 16  # collapse runs push unlabeled predictions to background from step 16


@pytest.fixture(scope="module")
def task(synth_root):
    """64 labeled and 32 unlabeled synthetic crops (64x48) with their joints, through collapse's crop store."""
    x, joints = coco_probe_set(synth_root, "train", (64, 48), 96)
    weight = (joints[..., 2] > 0).float()
    target = gaussian_targets(joints[..., :2] / 2, weight, (32, 24), 1.5)
    unl = x[64:][torch.arange(64) % 32]  # one unlabeled crop beside each labeled one
    return dict(x=x[:64], target=target[:64], weight=weight[:64], unl=unl, probe=x[64:], probe_joints=joints[64:],
                val=(x[:32], joints[:32]))


def _net():
    torch.manual_seed(0)
    return build_model(config.load("configs/demo.yaml", ["model.width=16"]).model, 17, 2)


def _loss(net, x, target, weight, unl, step, collapse):
    loss = 1000 * (((net(x) - target) ** 2) * weight[..., None, None]).mean()
    if collapse and step >= PUSH_FROM:  # every unlabeled pixel taught as background: what naive consistency drifts to
        loss = loss + 20000 * (net(unl) ** 2).mean()
    return loss


def _monitor_kwargs(task):
    return dict(unlabeled_joints=task["probe_joints"], labeled=task["val"], sigma=1.5)


def _check_folder(folder, collapsed):
    m = json.load(open(os.path.join(folder, "manifest.json")))
    probes = pd.read_parquet(os.path.join(folder, "probes.parquet"))
    assert sorted(probes.step.unique()) == list(range(EVERY, STEPS + 1, EVERY))  # exactly the requested steps
    assert m["status"] == ("collapsed" if collapsed else "done"), m
    assert (m["collapse_step"] is not None) == collapsed and (not collapsed or m["collapse_step"] > PUSH_FROM)
    assert {"pl_quantity", "pl_quality", "gt_bg_share", "max_response", "hist"} <= set(probes.name)
    assert m["timing"]["probe_ms_per_crop"] > 0 and "PCK@0.1" in m["final"]


def test_lightning_callback_watches_a_healthy_and_a_collapsing_run(task, tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from collapse.integrations.lightning import CollapseCallback

    class Pose(L.LightningModule):
        def __init__(self, collapse):
            super().__init__()
            self.net, self.collapse = _net(), collapse

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return _loss(self.net, *batch, self.global_step, self.collapse)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 3e-3)

    data = torch.utils.data.TensorDataset(task["x"], task["target"], task["weight"], task["unl"])
    for collapse in (False, True):
        folder = str(tmp_path / "results" / ("collapsing" if collapse else "healthy"))
        loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
        callback = CollapseCallback(task["probe"], folder, every=EVERY, name="lightning", **_monitor_kwargs(task))
        trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", callbacks=[callback], logger=CSVLogger(str(tmp_path / "logs")),
                            log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
        trainer.fit(Pose(collapse), loader)
        _check_folder(folder, collapse)
        logged = pd.read_csv(os.path.join(trainer.logger.log_dir, "metrics.csv"))
        assert logged["collapse/index"].notna().sum() == STEPS // EVERY  # in Lightning's own logger
    runs, metrics, probes = analysis.load(str(tmp_path / "results"))
    assert sorted(runs.status) == ["collapsed", "done"] and set(runs.label) == {"lightning"}
    assert len(metrics[metrics.name == "PCK@0.1"]) == 2 * STEPS // EVERY
    from collapse.cli import main  # the analysis commands read monitored runs like collapse's own
    assert main(["figures", str(tmp_path / "results"), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "collapse_curves.png").stat().st_size > 10_000
    assert (tmp_path / "fig" / "heatmap_gallery.png").exists()
    assert main(["report", str(tmp_path / "results")]) == 0 and main(["claims", str(tmp_path / "results")]) == 0


def test_mmengine_hook_watches_a_collapsing_run_and_can_stop_it(task, tmp_path):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from collapse.integrations.mmengine import CollapseHook

    class Pose(BaseModel):
        def __init__(self, collapse):
            super().__init__()
            self.net, self.collapse, self.step = _net(), collapse, 0

        def forward(self, inputs, target=None, weight=None, unl=None, mode="tensor"):
            if mode != "loss":
                return self.net(inputs)
            self.step += 1
            return dict(loss=_loss(self.net, inputs, target, weight, unl, self.step - 1, self.collapse))

    # one epoch holds every iteration: mmengine's infinite loader sleeps 2 s at each epoch's end
    items = [dict(inputs=task["x"][i], target=task["target"][i], weight=task["weight"][i], unl=task["unl"][i])
             for i in range(len(task["x"]))] * (STEPS * 16 // len(task["x"]) + 1)
    results = {}
    for collapse, stop in ((False, False), (True, False), (True, True)):
        folder = str(tmp_path / "results" / f"{collapse}-{stop}")
        hook = CollapseHook(task["probe"], folder, every=EVERY, stop_on_collapse=stop, name="mmengine", **_monitor_kwargs(task))
        runner = Runner(model=Pose(collapse), work_dir=str(tmp_path / "work" / f"{collapse}-{stop}"),
                        train_dataloader=dict(dataset=items, batch_size=16, sampler=dict(type="DefaultSampler", shuffle=True),
                                              collate_fn=dict(type="default_collate")),
                        train_cfg=dict(by_epoch=False, max_iters=STEPS), optim_wrapper=dict(optimizer=dict(type="Adam", lr=3e-3)),
                        default_hooks=dict(checkpoint=None, logger=dict(type="LoggerHook", interval=EVERY)),
                        custom_hooks=[hook], randomness=dict(seed=0), log_level="WARNING")
        runner.train()
        results[(collapse, stop)] = (runner, folder)
        if not stop:
            _check_folder(folder, collapse)
            assert len(runner.message_hub.get_scalar("train/collapse_index").data[0]) == STEPS // EVERY
    runner, folder = results[(True, True)]
    m = json.load(open(os.path.join(folder, "manifest.json")))
    assert m["status"] == "collapsed" and runner.iter < STEPS  # stopped early, where the detector fired
    assert runner.iter == m["steps"] == m["collapse_step"] + EVERY  # the second low probe confirms it
    runs, _, _ = analysis.load(str(tmp_path / "results"))
    assert len(runs) == 3


def test_a_probe_leaves_mode_gradients_and_statistics_as_they_were(task, tmp_path):
    net = _net()
    _loss(net, task["x"][:8], task["target"][:8], task["weight"][:8], task["unl"][:8], 0, False).backward()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [p.grad.clone() for p in net.parameters()]
    monitor = CollapseMonitor(net, task["probe"], str(tmp_path / "run"), every=1, **_monitor_kwargs(task))
    for mode in (True, False):
        net.train(mode)
        monitor(1, force=True)
        assert net.training == mode
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BatchNorm statistics too
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters()))
    plain = CollapseMonitor(lambda x: net(x), task["probe"], str(tmp_path / "callable"), every=1)  # a predict callable
    plain(1)  # no ground truth given: responses and histograms, no pseudo-label quality
    names = set(pd.read_parquet(tmp_path / "callable" / "probes.parquet").name)
    assert {"max_response", "hist", "fg_area"} <= names and "pl_quality" not in names


def test_what_the_monitor_cannot_use_is_one_clear_error(task, tmp_path):
    net = _net()
    cases = [
        (lambda: CollapseMonitor(net, torch.rand(4, 64, 48), str(tmp_path / "a")), "images must be a float tensor"),
        (lambda: CollapseMonitor(net, task["probe"], str(tmp_path / "b"), unlabeled_joints=torch.zeros(5, 17, 3)),
         "must be (N,K,3) with N=32"),
        (lambda: CollapseMonitor(net, task["probe"], str(tmp_path / "c"), every=0), "every and size must be >= 1"),
        (lambda: CollapseMonitor(net, [1, 2], str(tmp_path / "d")), "hold no image tensor"),
        (lambda: CollapseMonitor(lambda x: x.mean(1), task["probe"], str(tmp_path / "e"))(1, force=True),
         "must return heatmaps (N,K,h,w)"),
        (lambda: CollapseMonitor(net, "no/such/folder", str(tmp_path / "f"), input_size=(64, 48)), "probe folder not found"),
    ]
    for make, text in cases:
        with pytest.raises(MonitorError) as e:
            make()
        assert text in str(e.value) and "\n" not in str(e.value)


def test_the_monitored_run_notebook_draws_a_lightning_runs_collapse_curves(synth_root, tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from conftest import REPO
    nb = nbformat.read(os.path.join(REPO, "notebooks", "monitored_run.ipynb"), as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source.startswith("RESULTS = ")  # the variables a user edits
    first.source = first.source.replace('"../results/monitored"', repr(str(tmp_path / "monitored"))).replace(
        '"../data/synthetic_w2"', repr(synth_root))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    runs, _, _ = analysis.load(str(tmp_path / "monitored"))
    assert dict(zip(runs.label, runs.status)) == {"healthy": "done", "pushed to background": "collapsed"}

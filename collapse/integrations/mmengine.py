"""mmengine (the runner mmpose 1.x trains with): CollapseHook probes runner.model every `every` iterations,
logs the collapse index to the runner's message hub (its loggers and visualizer backends see it) and can
stop training when the detector fires. Registered as 'CollapseHook' in mmengine's HOOKS:

    custom_hooks = [dict(type="CollapseHook", unlabeled=probe_images, folder="results/mmpose_run", every=100)]

(import collapse.integrations.mmengine first, e.g. through the config's custom_imports). For an mmpose
TopdownPoseEstimator give `predict=lambda model: (lambda x: model.head(model.extract_feat(x)))`."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..monitor import CollapseMonitor


@HOOKS.register_module(force=True)
class CollapseHook(Hook):
    priority = "LOW"

    def __init__(self, unlabeled, folder, every=100, stop_on_collapse=False, predict=None, **monitor_kwargs):
        self.unlabeled, self.folder, self.every = unlabeled, folder, every
        self.stop_on_collapse, self.predict, self.kwargs = stop_on_collapse, predict, monitor_kwargs
        self.monitor = None

    def before_train(self, runner):
        if runner.rank == 0:
            model = runner.model.module if hasattr(runner.model, "module") else runner.model  # unwrap DDP
            self.monitor = CollapseMonitor(self.predict(model) if self.predict else model, self.unlabeled,
                                           self.folder, every=self.every, stop_on_collapse=self.stop_on_collapse,
                                           **self.kwargs)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        step = runner.iter + 1  # iterations done
        if self.monitor is None or not self.monitor.due(step):
            return
        stop = self.monitor(step)
        runner.message_hub.update_scalar("train/collapse_index", self.monitor.collapse_index)
        if stop:
            runner.train_loop.stop_training = True

    def after_train(self, runner):
        if self.monitor is not None:
            self.monitor.close()

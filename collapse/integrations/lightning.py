"""PyTorch Lightning: CollapseCallback probes the LightningModule every `every` optimizer steps, logs the
collapse index through the module's own logger and can stop the run when the detector fires.

    trainer = lightning.Trainer(callbacks=[CollapseCallback(unlabeled_images, "results/lit_run", every=50)])
"""
try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    from pytorch_lightning.callbacks import Callback

from ..monitor import CollapseMonitor


class CollapseCallback(Callback):
    """unlabeled, folder and the keywords are CollapseMonitor's; `predict(module)` -> the callable whose
    output is the heatmaps (default: the module itself, e.g. lambda m: m.net for a wrapped net)."""

    def __init__(self, unlabeled, folder, every=100, stop_on_collapse=False, predict=None, **monitor_kwargs):
        self.unlabeled, self.folder, self.every = unlabeled, folder, every
        self.stop_on_collapse, self.predict, self.kwargs = stop_on_collapse, predict, monitor_kwargs
        self.monitor = None

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            model = self.predict(pl_module) if self.predict else pl_module
            self.monitor = CollapseMonitor(model, self.unlabeled, self.folder, every=self.every,
                                           stop_on_collapse=self.stop_on_collapse, **self.kwargs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # optimizer steps taken
        if self.monitor is None or not self.monitor.due(step):
            return
        stop = self.monitor(step)
        pl_module.log("collapse/index", self.monitor.collapse_index, rank_zero_only=True)
        if stop:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        if self.monitor is not None:
            self.monitor.close()

"""Methods state a loss recipe over predictions and nothing else; the trainer does the rest.

A method is a small object with:
  Settings                   its settings dataclass (what a config's `method:` mapping may hold for it)
  nets                       how many networks the trainer builds (each gets the supervised loss)
  unsupervised(ctx, unl)     named loss terms (weighted, summed by the trainer) from an unlabeled batch;
                             terms named stat/... are statistics, logged and never summed
  after_step(ctx)            bookkeeping after the optimizer step (e.g. an EMA update)
  label / order / cost       how its runs are named, where they sit in tables, their time per step
It sees a run only through its Context (context.py): nets, teachers, batches, step, forward, save_artifact,
restart. Register one with @register("name"); adding a method is one module here plus a config.
"""
import importlib
import pkgutil

from .base import Method, Settings, heatmap_mse, is_loss
from .context import Context
from .registry import METHODS, MethodError, build_method, method_class, register

for _module in pkgutil.iter_modules(__path__):  # every module here registers its methods: a new one is one file
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Context", "Method", "METHODS", "MethodError", "Settings", "build_method", "method_class", "register",
           "heatmap_mse", "is_loss"]

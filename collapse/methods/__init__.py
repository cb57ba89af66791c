"""Methods state a loss recipe over predictions and nothing else; the trainer does the rest.

A method is a small object with:
  nets                       how many networks the trainer builds (each gets the supervised loss)
  unsupervised(ctx, unl)     named loss terms (weighted, summed by the trainer) from an unlabeled batch;
                             terms named stat/... are statistics, logged and never summed
  after_step(ctx)            bookkeeping after the optimizer step (e.g. an EMA update)
Register one with @register("name").
"""
from .base import Method, heatmap_mse, is_loss
from .registry import METHODS, MethodError, build_method, register
from . import consistency, mix, pseudo, supervised  # noqa: F401  (they register themselves)

__all__ = ["Method", "METHODS", "MethodError", "build_method", "register", "heatmap_mse", "is_loss"]

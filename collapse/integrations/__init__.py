"""Adapters that put collapse.monitor.CollapseMonitor into other trainers: a PyTorch Lightning Callback
(lightning.py, extra `lightning`) and an mmengine Hook for mmpose 1.x (mmengine.py, extra `mmengine`). Each
imports its framework only when imported itself."""

"""Training: the one loop (loop.py: `Trainer`, whose `begin`, `train_step`, `save` and `finish` drive a run step
by step), its checkpoint (checkpoint.py), what a run is built from (setup.py) and `train`, which runs one into
its folder (run.py)."""
from .loop import NonFiniteLoss, Trainer
from .run import train
from .setup import init_sources, load_net, start

__all__ = ["NonFiniteLoss", "Trainer", "train", "init_sources", "load_net", "start"]

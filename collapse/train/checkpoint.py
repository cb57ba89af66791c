"""A run's checkpoint: one map {name: part}, saved by one function and loaded by another.

A part is anything with state_dict() / load_state_dict(state): nets, optimizer, scheduler, the batches; `Field`
makes an attribute one, `Part` a getter/setter pair, `Each` a list of parts. The names are the file's keys
(`collapse evaluate` and warm starts read `nets` and `step`). A part a checkpoint lacks (one written before the
part existed) keeps its fresh state: the one rule for older checkpoints."""
import os

import torch

from .. import runs


class Part:
    def __init__(self, get, put):
        self.state_dict, self.load_state_dict = get, put


class Field(Part):
    """An object's attribute as a part."""

    def __init__(self, obj, name):
        super().__init__(lambda: getattr(obj, name), lambda value: setattr(obj, name, value))


class Rows(Part):
    """An attribute holding a list of named rows (NamedTuple); older checkpoints' plain tuples become named."""

    def __init__(self, obj, name, row):
        super().__init__(lambda: getattr(obj, name), lambda rows: setattr(obj, name, [row(*r) for r in rows]))


class Each(Part):
    """A list of parts (the nets, the teachers) as one."""

    def __init__(self, parts):
        def put(states):
            for p, s in zip(parts, states):
                p.load_state_dict(s)
        super().__init__(lambda: [p.state_dict() for p in parts], put)


# the global torch generator (weight initialisation of re-started nets, dropout-free nets' other draws)
TORCH_RNG = Part(torch.get_rng_state, lambda s: torch.set_rng_state(s.cpu()))


def save(path, parts):
    runs.atomic_torch_save(path, {name: part.state_dict() for name, part in parts.items()})


def read(path, device):
    """The checkpoint at `path` (tensors on `device`), or None where there is none."""
    return torch.load(path, map_location=device, weights_only=False) if os.path.exists(path) else None


def load(state, parts):
    """Every part from `state`, in the map's order; parts the checkpoint lacks keep their fresh state."""
    for name, part in parts.items():
        if name in state:
            part.load_state_dict(state[name])

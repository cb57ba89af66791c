"""What a method sees of a run: its networks (and their teachers), the batch maker, the step, and three
doors out: `forward` (every pass a method makes), `save_artifact` (files a recipe leaves in the run
folder) and `restart` (a fresh student). Nothing else of the trainer is reachable from a method.

Mixed precision lives here and nowhere else: a network pass runs under bf16 autocast (train.precision),
everything around it (view matrices, their inverses, point transforms, targets, masks, loss reductions)
in float32 on every device. CUDA's autocast has no float32 rule for linalg ops (the CPU's has), so
geometry computed under autocast would reach a bf16 inverse there, which CUDA refuses; and bf16 view
matrices at 256x192 move points by up to ~3.6 px."""
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from ..models import evaluating


@runtime_checkable
class Views(Protocol):
    """What the consistency family asks of `ctx.batches` (collapse.data.batches.Batches; analysis/toy.py's
    ToyViews for points): views of an unlabeled batch, the shared hard draw (`views.extra`), a teacher's
    heatmap carried from one view's frame into another's with the mask of what it saw, and the heatmap stride."""
    stride: int
    views: object

    def view(self, unl, kind="easy", photometric=None, extra=None): ...

    def transport(self, heat, A_from, flip_from, A_to, flip_to): ...


@runtime_checkable
class Data(Views, Protocol):
    """Everything a method may ask of `ctx.batches` beyond `Views`: the step's random numbers (`draws`), the input
    size, the run's skeleton, targets for points in a view, per-joint facts reordered between views, the field
    a view's pixels come from, the plain view of a pool's rows, and the unlabeled pool (its length, `fetch`,
    `areas`, `rows`) with the subset a staged recipe trains on."""
    draws: object
    input_hw: tuple
    skeleton: object
    unlabeled_pool: object
    unlabeled_subset: object

    def targets(self, A, flip, keypoints): ...

    def reorder(self, t, v_from, v_to): ...

    def field(self, A_from, A_to): ...

    def base(self, n, pool): ...


@dataclass
class Context:
    nets: list                       # the trained networks (each gets the supervised loss)
    batches: Data                    # what a method may ask of the data (Data above; the 2-D toy: Views)
    teachers: list = None            # what teaches each net (default: the net itself; an EMA copy for mean_teacher)
    trained: list = None             # what a net's own passes run through: its DDP wrapper in a multi-process run
    step: int = 0
    steps: int = 0                   # the run's length (staged recipes place their stages by it)
    epoch: int = 1                   # steps in one pass over the unlabeled pool (the papers' epoch)
    compile: bool = False            # train.compile: passes go through torch.compile'd callables ...
    compile_mode: str = "default"    # ... of this mode (train.compile_mode)
    bf16: bool = False               # network passes under bf16 autocast (their outputs cast back to float32)
    on_artifact: object = None       # (name, {array name: numpy array}) -> writes RUN/name; None: not kept
    on_restart: object = None        # (net index) -> re-initialise that net with a fresh optimizer state
    _compiled: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.teachers is None:
            self.teachers = list(self.nets)
        if self.trained is None:
            self.trained = list(self.nets)

    def forward(self, x, net=0, teacher=False):
        """Net `net`'s prediction of x (its teacher's with teacher=True), in float32 for the losses. Every pass
        a method makes goes through here, so compiling (train.compile) covers all of them."""
        return self._pass((self.teachers if teacher else self.trained)[net], x)

    def predict(self, module, x):
        """A network's eval-mode prediction in float32, outside autocast and compilation: how pseudo-labels
        are made (like evaluation), its mode given back."""
        with evaluating(module):
            return module(x).float()

    def run(self, module, x, train_mode=False):
        """A pass of a module that is not one of the run's nets (a recipe's frozen copy), compiled like the
        others, in float32; train_mode: with batch statistics (its running ones are then updated)."""
        was = module.training
        module.train(train_mode)
        try:
            return self._pass(module, x)
        finally:
            module.train(was)

    def _pass(self, module, x):
        """A network pass: the only code of a step under autocast; its output in float32."""
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.bf16):
            out = self._callable(module)(x)
        return out.float()

    def _callable(self, module):
        """The module, or with train.compile its torch.compile'd callable (made once per module)."""
        if not self.compile:
            return module
        if id(module) not in self._compiled:
            self._compiled[id(module)] = torch.compile(module, mode=self.compile_mode)
        return self._compiled[id(module)]

    def save_artifact(self, name, **arrays):
        """Keep arrays (numpy) as RUN/name (.npz), written atomically; a no-op outside a run."""
        if self.on_artifact is not None:
            self.on_artifact(name, arrays)

    def restart(self, net):
        """Net `net` becomes a fresh student: new weights, empty optimizer state (seeded by the run and step)."""
        self.on_restart(net)

"""A run's random numbers: one seeded generator on the run's device, shared by every draw of a step.

Under DDP every rank holds the same generator, draws the numbers of the *global* batch and keeps its own
share: a rank's samples get exactly the numbers they would get in a one-process run of that global batch
(so a 2-process run can be compared with a 1-process one), and the ranks' generators never drift apart (a
checkpoint's generator state is every rank's). With one process a draw is the plain torch call it always
was: the CPU stream is the one earlier versions drew."""
import torch


class Draws:
    def __init__(self, generator: torch.Generator, rank=0, world=1, device=None):
        """device: where the numbers are used, when not where the generator draws them (a host generator
        feeding a GPU run: the same numbers as a CPU run, for `collapse gpu-check`'s CUDA-vs-CPU check)."""
        self.gen, self.rank, self.world = generator, rank, world
        self.out = torch.device(device) if device is not None else generator.device

    @classmethod
    def seeded(cls, seed, device="cpu", rank=0, world=1):
        return cls(torch.Generator(device=device).manual_seed(seed), rank, world)

    @property
    def device(self):
        return self.out

    def share(self, t, dim=0):
        """This rank's part of a tensor drawn for the global batch along `dim`."""
        if self.world == 1:
            return t
        n = t.shape[dim] // self.world
        return t.narrow(dim, self.rank * n, n)

    def _draw(self, make, shape, dim, whole):
        shape = list(shape)
        shape[dim] *= self.world
        t = make(shape)
        if self.out != self.gen.device:
            t = t.to(self.out)
        return t if whole else self.share(t, dim)

    def uniform(self, *shape, dim=0, whole=False):
        """U[0, 1) of `shape`, whose axis `dim` is this rank's batch (whole=True: the global batch's draw)."""
        return self._draw(lambda s: torch.rand(s, generator=self.gen, device=self.gen.device), shape, dim, whole)

    def normal(self, *shape, dim=0, whole=False):
        return self._draw(lambda s: torch.randn(s, generator=self.gen, device=self.gen.device), shape, dim, whole)

    def integers(self, low, high, *shape, dim=0, whole=False):
        """Integers in [low, high)."""
        return self._draw(lambda s: torch.randint(low, high, s, generator=self.gen, device=self.gen.device),
                          shape, dim, whole)

    def get_state(self):
        return self.gen.get_state()

    def set_state(self, state):
        # generator states are host tensors (a checkpoint's map_location may have moved one)
        self.gen.set_state(state if state.device.type == "cpu" else state.cpu())

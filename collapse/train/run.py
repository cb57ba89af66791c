"""`train`: one run into its folder, resumed from its checkpoint; a folder of another config is refused."""
import os

from .. import distributed, runs
from ..errors import ConfigError
from .loop import Trainer
from .setup import start


def train(cfg, out, progress=True):
    """Train one run into folder `out`; resumes from its checkpoint; returns the manifest. Under DDP rank 0's
    folder decides (finished, another run's, or go on) for every rank."""
    world = distributed.from_env()
    m = runs.RunDir(out).manifest()
    rid = runs.run_id(cfg.to_dict())
    verdict = 2 if m.get("run_id") not in (None, rid) else 1 if m.get("status") in runs.FINISHED else 0
    try:
        if world.size > 1:
            verdict = distributed.from_main(verdict, start(world, cfg.train))
        if verdict == 2:
            raise ConfigError(f"{out} holds run {m.get('run_id')} of another config (this one is {rid}): "
                              "choose another --out")
        if verdict == 1:
            return m
        try:
            return Trainer(cfg, out, progress).fit()
        except Exception as e:
            run = runs.RunDir(out)
            if world.main and os.path.exists(run.file("manifest.json")):  # a started run: say why it ended
                run.update_manifest(status="failed", reason=f"{type(e).__name__}: {e}"[:500])
            raise
    finally:
        distributed.leave()

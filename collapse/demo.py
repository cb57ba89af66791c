"""The main job: the collapse study's methods on the embedded synthetic set, run as a shipped grid
(configs/grids/demo.yaml: a supervised stage per seed, then every method continues from it).
Its table and figure come from the analysis package (analysis/demo.py)."""
import os

from .grid import expand, run_grid
from .runs import FINISHED
from .data.splits import ensure_data
from .methods import METHODS

GRID = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "grids", "demo.yaml")


def run_all(grid, out, seed, overrides=(), jobs=2, echo=print):
    """Run the demo grid (`jobs` processes at once, one CPU thread each) through the grid machinery;
    returns {method: run folder name under out} of the (non-stage) runs that finished."""
    overrides = [*overrides, f"train.seed={seed}"]
    runs = expand(grid, out, overrides=overrides)
    ensure_data(runs[0].cfg)  # once, before the runs start in parallel
    states = run_grid(grid, out, jobs=jobs, threads=1, overrides=overrides, echo=echo,
                      order=lambda r: -METHODS[r.cfg.method.name].cost)  # longest first: workers end together
    return {r.cfg.method.name: os.path.relpath(r.folder, out) for r in runs
            if not r.stage and states[r.name] in FINISHED}

import os

import pytest
import torch

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)  # two workers on two cores: one thread each
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="session")
def in_the_repository():
    """The tests name configs and notebooks as a user does from a clone (configs/demo.yaml): they run from
    the repository root whatever directory pytest was started in."""
    before = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(before)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic COCO-format set shared by the tests."""
    root = str(tmp_path_factory.mktemp("synthetic"))
    make_synthetic(root)
    return root


def make_synthetic(root):
    """The suite's small synthetic set (300 train, 60 val images, seed 3) at `root`, in the demo's world
    (configs/demo.yaml: the tests train it with data.root=<this folder>)."""
    from collapse import config
    from collapse.data import synthetic
    world = config.load(os.path.join(REPO, "configs", "demo.yaml")).data.synthetic_world
    synthetic.prepare(root, 300, 60, seed=3, workers=2, world=world)

"""Makes tests/data/golden_results: three small finished runs (supervised, naive consistency at weight 10 that
collapses, dual) that the analysis tests read instead of training them each time. Their run folders as training
writes them, less what analysis never reads (checkpoint.pt, predictions/). Run from the repository root after a
change to what a run writes: `python tests/data/make_golden_results.py` (about 40 s on 2 cores)."""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import make_synthetic  # noqa: E402  (the suite's own small synthetic set)

from collapse.cli import main  # noqa: E402

SMALL = ["model.width=8", "data.labeled=30", "train.steps=300", "train.probe_every=25", "train.eval_every=150",
         "train.probe_size=32", "train.lr_steps=[]", "train.threads=1", "train.progress=false", "train.device=cpu"]
# naive consistency at a strong weight (ramped up, so it first rises and then falls) collapses within 300 steps
# on the small set; supervised and dual at the paper's weights do not
RUNS = {"supervised": ["method.name=supervised"],
        "consistency": ["method.name=consistency", "method.unsup_weight=10", "method.rampup=150"],
        "dual": ["method.name=dual"]}
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_results")

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "synthetic")
        make_synthetic(root)
        out = os.path.join(tmp, "results")
        for name, extra in RUNS.items():
            assert main(["train", "configs/demo.yaml", f"data.root={root}", *SMALL, *extra,
                         "--out", os.path.join(out, name), "--quiet"]) == 0
            os.remove(os.path.join(out, name, "checkpoint.pt"))
            shutil.rmtree(os.path.join(out, name, "predictions"))
        shutil.rmtree(GOLDEN, ignore_errors=True)
        shutil.copytree(out, GOLDEN)
    print(f"wrote {GOLDEN}")

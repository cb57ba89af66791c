"""The code's shape: imports run one way (collapse never imports analysis), and a method is one file."""
import os
import shutil
import subprocess
import sys

from conftest import REPO

NO_ANALYSIS = """
import importlib, pkgutil, sys
class Unavailable:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "analysis":
            raise ImportError("analysis is not available")
sys.meta_path.insert(0, Unavailable())
import collapse
names = [m.name for m in pkgutil.walk_packages(collapse.__path__, "collapse.") if m.name != "collapse.__main__"]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_the_library_never_imports_analysis():
    r = subprocess.run([sys.executable, "-c", NO_ANALYSIS], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout) >= 30  # every module of collapse/ was imported


SOFT_THRESHOLD = '''"""Teacher-confidence weighting instead of a mask: a joint's loss weighs its teacher's peak ** power."""
from dataclasses import dataclass

from .base import CutoutSettings
from .consistency import TeacherStudent
from .registry import register


@dataclass
class SoftThresholdSettings(CutoutSettings):
    power: float = 2.0               # 0: unweighted (easy_hard); large: close to a hard threshold


@register("soft_threshold")
class SoftThreshold(TeacherStudent):
    Settings = SoftThresholdSettings
    order = 3.5

    @classmethod
    def variant(cls, s):
        return f" (power {s.get('power')})"

    def weight(self, confidence, target):
        return (confidence.clamp(min=0) ** self.cfg.power)[..., None, None]
'''


def test_a_new_method_is_one_file_and_a_config(tmp_path, synth_root):
    """In a copy of the code: one module in collapse/methods/ and one YAML make a method that validates its
    settings, trains, and is named by analysis; nothing else is edited."""
    for folder in ("collapse", "analysis", "configs"):
        shutil.copytree(os.path.join(REPO, folder), tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "collapse" / "methods" / "soft_threshold.py").write_text(SOFT_THRESHOLD)
    (tmp_path / "configs" / "methods" / "soft_threshold.yaml").write_text(
        "extends: ../demo.yaml\nmethod:\n  name: soft_threshold\n  power: 3.0\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = lambda *argv: subprocess.run([sys.executable, "-m", "collapse", *argv], cwd=tmp_path, env=env,
                                       capture_output=True, text=True, timeout=300)
    small = [f"data.root={synth_root}", "model.width=8", "train.steps=4", "train.eval_every=4", "train.probe_every=2",
             "train.probe_size=8", "train.log_every=2", "train.device=cpu", "train.threads=1"]
    r = run("train", "configs/methods/soft_threshold.yaml", *small, "--out", str(tmp_path / "runs" / "soft"), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    # a setting the method does not read, then analysis naming the run (one process: start-up is this test's time)
    check = ("import analysis\nfrom collapse import config\ntry:\n"
             "    config.load('configs/methods/soft_threshold.yaml', ['method.tau=0.5'])\n"
             "except config.ConfigError as e:\n    print(e)\n"
             f"print(analysis.load({str(tmp_path / 'runs')!r})[0].label[0])")
    label = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    bad, name = label.stdout.strip().splitlines()
    assert "method 'soft_threshold' has no setting 'tau'" in bad, label.stderr[-2000:]
    assert name == "soft_threshold (power 3.0)"


def _slug(heading):
    """GitHub's anchor for a Markdown heading."""
    import re
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_path_link_and_section_the_docs_name_exists():
    """README.md and docs/*.md: Markdown links (file and #section), backticked repository paths, and the
    references of the form docs/NAME.md + a quoted section, made from code and configs all point at something that exists."""
    import glob
    import re
    pages = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
    assert len(pages) >= 8
    headings = {p: {_slug(h) for h in re.findall(r"^#+ (.*)$", open(p).read(), re.M)} for p in pages}
    missing = []
    for page in pages:
        text = open(page).read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith("http"):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(full):
                missing.append(f"{os.path.basename(page)}: link {target}")
            elif anchor and anchor not in headings.get(full, set()):
                missing.append(f"{os.path.basename(page)}: section {target}")
        for path in re.findall(r"`((?:collapse|analysis|configs|tests|notebooks|docs)/[\w./-]*[\w/])", text):
            if "." not in path and not path.endswith("/"):
                continue  # a name such as the logged `collapse/index`, not a file or folder
            if not glob.glob(os.path.join(REPO, path.rstrip("/")) + "*"):
                missing.append(f"{os.path.basename(page)}: path {path}")
    sources = [p for pat in ("collapse/**/*.py", "analysis/**/*.py", "tests/*.py", "configs/**/*.yaml")
               for p in glob.glob(os.path.join(REPO, pat), recursive=True)]
    for src in sources:
        for doc, name in re.findall(r"(docs/[a-z_]+\.md), [\"']([^\"']+)[\"']", open(src).read()):
            if name not in open(os.path.join(REPO, doc)).read():
                missing.append(f"{os.path.relpath(src, REPO)}: {doc} has no '{name}'")
    assert not missing, "\n".join(missing)
    assert len(open(pages[0]).read().splitlines()) <= 200  # the README is a front door; the rest is in docs/


def test_modules_fit_in_350_lines_and_the_loop_in_200():
    """Every module of collapse/ and analysis/ is small enough to read whole; the training loop fits a screen."""
    import glob
    sizes = {os.path.relpath(p, REPO): len(open(p).read().splitlines())
             for p in glob.glob(os.path.join(REPO, "collapse", "**", "*.py"), recursive=True)
             + glob.glob(os.path.join(REPO, "analysis", "*.py"))}
    assert len(sizes) > 50 and sizes["collapse/train/loop.py"] <= 200
    assert {p: n for p, n in sizes.items() if n > 350} == {}


def test_methods_import_only_errors_views_the_context_and_their_registry(synth_root):
    """A method states a loss recipe: it may import the error types, the view and heatmap operations
    (augment, heatmaps, occlude), the context and the other method modules, never the data, models, trainer
    or config modules; what it asks of the data is declared (collapse.methods.context.Data / Views), and both
    the real batches and the 2-D toy's provide it."""
    import ast
    import glob
    allowed = {"collapse.errors", "collapse.augment", "collapse.heatmaps", "collapse.occlude"}
    wrong = []
    for path in glob.glob(os.path.join(REPO, "collapse", "methods", "*.py")):
        if path.endswith("context.py"):
            continue  # the boundary itself: it runs the nets (models.evaluating)
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.level:
                module = "collapse." + ("methods." if node.level == 1 else "") + (node.module or "")
                if not (module.startswith("collapse.methods") or module in allowed):
                    wrong.append(f"{os.path.basename(path)}: {module}")
    assert not wrong, wrong
    import torch
    from analysis.toy import ToySettings, ToyViews
    from collapse.methods.context import Data, Views
    assert isinstance(ToyViews(ToySettings(), torch.Generator()), Views)
    import numpy as np
    from collapse import config
    from collapse.data.batches import Batches
    from collapse.data.store import Pool, build
    from collapse.draws import Draws
    cfg = config.load("configs/demo.yaml")
    store = build(synth_root, "val", tuple(cfg.data.input_size), cfg.data.store_margin)
    cpu = torch.device("cpu")
    batches = Batches(cfg, Pool(store, np.arange(8), cpu), Pool(store, np.arange(8, 16), cpu), cpu,
                      Draws(torch.Generator().manual_seed(0)))
    assert isinstance(batches, Data) and not isinstance(ToyViews(ToySettings(), torch.Generator()), Data)

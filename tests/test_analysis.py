"""analysis/ on small real runs: loading, the collapse detector, boundary drift, figures, tables, notebooks."""
import json
import os

import shutil

import numpy as np
import pytest

import analysis
from collapse.cli import main
from collapse.detector import collapse_index, collapse_step

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden_results")


def _golden_recipe():
    """SMALL and RUNS: the settings the golden runs were made with (tests/data/make_golden_results.py)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_golden_results", os.path.join(os.path.dirname(GOLDEN),
                                                                                       "make_golden_results.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SMALL, module.RUNS


SMALL, RUNS = _golden_recipe()


@pytest.fixture(scope="session")
def results(tmp_path_factory):
    """Three small finished runs, committed (tests/data/make_golden_results.py made them: supervised, naive
    consistency at weight 10 that collapses, dual), copied so a test may add to them."""
    out = tmp_path_factory.mktemp("results") / "golden"
    shutil.copytree(GOLDEN, out)
    return str(out)


def test_index_and_detector_on_made_up_curves():
    idx, peak = collapse_index([0.0, 0.2, 0.4, 0.1, 0.3])
    assert np.allclose(idx, [1, 1, 1, 0.25, 0.75]) and np.allclose(peak, [0, 0.2, 0.4, 0.4, 0.4])
    steps = [0, 100, 200, 300, 400, 500]
    assert collapse_step(steps, [0, 0.4, 0.15, 0.1, 0.1, 0.1]) == 200
    assert collapse_step(steps, [0, 0.4, 0.15, 0.3, 0.15, 0.3]) is None       # never two low probes in a row
    assert collapse_step(steps, [0, 0.04, 0.01, 0.01, 0.01, 0.01]) is None    # never rose above the floor


def test_load_gives_runs_metrics_and_probes(results):
    runs, metrics, probes = analysis.load(results)
    assert sorted(runs.run) == ["consistency", "dual", "supervised"]
    assert set(runs.status) == {"done"} and (runs["data.labeled"] == 30).all()
    assert {"method.unsup_weight", "train.seed", "final.PCK@0.1", "label"} <= set(runs.columns)
    assert set(metrics.run) == set(probes.run) == set(runs.run)
    assert {"step", "split", "net", "joint", "name", "param", "value", "run"} == set(probes.columns)
    # a run in progress (no metrics yet) and an unreadable manifest are loaded, not skipped
    os.makedirs(os.path.join(results, "pending"))
    try:
        open(os.path.join(results, "pending", "manifest.json"), "w").write("{not json")
        runs2, metrics2, _ = analysis.load(results)
        assert runs2.set_index("run").loc["pending", "status"] == "unreadable" and len(metrics2) == len(metrics)
    finally:
        import shutil
        shutil.rmtree(os.path.join(results, "pending"))
    with pytest.raises(analysis.NotResults):
        analysis.load(str(_empty(results)))


def test_detector_flags_naive_consistency_only(results):
    runs, metrics, probes = analysis.load(results)
    t = analysis.collapse_table(runs, probes, metrics).set_index("label")
    assert bool(t.loc["consistency (w 10)", "collapsed"]) and 0 < t.loc["consistency (w 10)", "collapse_step"] <= 300
    assert not t.loc["supervised", "collapsed"] and not t.loc["dual", "collapsed"]
    assert t.loc["consistency (w 10)", "vs_supervised"] < 0.35 < t.loc["dual", "vs_supervised"]  # 0.26 here, 1.0 for dual
    assert t.loc["supervised", "vs_supervised"] == pytest.approx(1.0)


def test_stop_on_collapse_ends_the_run_marked_collapsed(synth_root, tmp_path):
    out = str(tmp_path / "c")
    assert main(["train", "configs/demo.yaml", f"data.root={synth_root}", *SMALL, *RUNS["consistency"],
                 "train.stop_on_collapse=true", "train.collapse_ratio=0.6", "--out", out, "--quiet"]) == 0
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["status"] == "collapsed" and m["steps"] < 300 and m["collapse_step"] < m["steps"]
    assert "AP" in m["final"]  # evaluated at the stop, so the run still has a final score
    # resuming a collapsed run does not train it again
    assert main(["train", "configs/demo.yaml", f"data.root={synth_root}", *SMALL, *RUNS["consistency"],
                 "train.stop_on_collapse=true", "train.collapse_ratio=0.6", "--out", out, "--quiet"]) == 0
    assert json.load(open(os.path.join(out, "manifest.json")))["steps"] == m["steps"]


def test_boundary_drift_and_histograms(results):
    runs, _, probes = analysis.load(results)
    d = analysis.boundary_drift(runs, probes)
    assert set(d.tau) == {0.1, 0.2, 0.3, 0.4, 0.5}
    assert d.target_radius.iloc[0] > 0 and (d.radius >= 0).all() and d.gt_bg_share.between(0, 1).all()
    last = d[d.step == 300].set_index(["label", "tau"])
    # the collapsed run calls more joint pixels background than supervised does
    assert last.loc[("consistency (w 10)", 0.2), "gt_bg_share"] > last.loc[("supervised", 0.2), "gt_bg_share"]
    h = analysis.response_histograms(runs, probes)
    # at the end, the collapsed run has lost its peaks: a far smaller share of its pixels respond above 0.1
    high = h[(h.step == 300) & (h.edge >= 0.1)].groupby("label").share.sum()
    assert high["consistency (w 10)"] < 0.25 * high["supervised"]


def test_figures_are_written_nonempty_and_deterministic(results, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["figures", results, "--out", str(a)]) == 0
    assert main(["figures", results, "--out", str(b)]) == 0
    names = sorted(os.listdir(a))
    stems = {"collapse_curves", "response_distributions", "boundary_drift", "final_ap", "heatmap_gallery",
             "heatmap_evolution", "joint_errors"}
    assert names == sorted(f"{s}.{e}" for s in stems for e in ("pdf", "png"))
    for n in names:
        data = (a / n).read_bytes()
        assert len(data) > 10_000 and data == (b / n).read_bytes(), n
    pdf = (a / "collapse_curves.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType fonts embedded, no Type 3
    from analysis.demo import demo_figure  # the demo's figure too: the same bytes on a rerun, no software version
    runs = sorted(os.listdir(results))
    first, again = (demo_figure(results, runs, str(d / "demo")) for d in (a, b))
    for x, y in zip(first, again):
        data = open(x, "rb").read()
        assert data == open(y, "rb").read() and b"Software" not in data and b"CreationDate" not in data, x


def test_figures_draw_one_line_per_method_with_its_data(results, tmp_path, monkeypatch):
    """What the figures draw, not their file sizes: the figures are caught before saving and read back."""
    import analysis.figures as figures
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.setdefault(os.path.basename(stem), fig) and [])
    figures.write_figures(results, str(tmp_path))
    assert set(drawn) == {"collapse_curves", "response_distributions", "boundary_drift", "final_ap",
                          "heatmap_gallery", "heatmap_evolution", "joint_errors"}
    parts = drawn["joint_errors"].axes  # a panel per body part, a bar per method, a segment per error kind
    assert [ax.get_title() for ax in parts] == ["face", "arms", "legs"]
    assert [t.get_text() for t in parts[0].get_yticklabels()] == ["supervised", "consistency (w 10)", "dual"]
    good = analysis.part_errors(analysis.joint_errors(results)).set_index(["label", "part"]).good
    assert np.allclose([b.get_width() for b in parts[0].patches[:3]],
                       [good[(l, "face")] for l in ("supervised", "consistency (w 10)", "dual")])
    labels = ["supervised", "consistency (w 10)", "dual"]  # plot order
    runs, metrics, probes = analysis.load(results)
    curves = analysis.collapse_curves(runs, probes)
    response, index, ap = drawn["collapse_curves"].axes
    for ax, ylabel in ((response, "response"), (index, "collapse index"), (ap, "AP")):
        lines = [l for l in ax.get_lines() if not l.get_label().startswith("_")]  # not the threshold line
        assert [l.get_label() for l in lines] == labels and ylabel in ax.get_ylabel() and ax.get_xlabel() == "step"
    assert [t.get_text() for t in ap.get_legend().get_texts()] == labels
    # the response panel's consistency line is that run's probed response, step by step
    line = next(l for l in response.get_lines() if l.get_label() == "consistency (w 10)")
    c = curves[curves.run == "consistency"].sort_values("step")
    assert np.allclose(line.get_xdata(), c.step) and np.allclose(line.get_ydata(), c.response)
    assert index.get_lines()[-1].get_ydata()[0] == analysis.detector.COLLAPSE_RATIO  # the detector's threshold
    bars = drawn["final_ap"].axes[0]
    assert [t.get_text() for t in bars.get_xticklabels()] == labels
    final = dict(zip(runs.label, analysis.final_ap(runs, metrics)))
    assert np.allclose([p.get_height() for p in bars.patches], [final[l] for l in labels])
    ridge = drawn["response_distributions"].axes
    assert [ax.get_title() for ax in ridge] == labels and all(len(ax.collections) == 13 for ax in ridge)  # 13 probes
    drift = drawn["boundary_drift"].axes
    assert all([l.get_label() for l in ax.get_lines() if not l.get_label().startswith("_")] == labels for ax in drift)


def test_joint_errors_by_part_read_each_runs_final_evaluation(results):
    """joints.parquet (the final evaluation's joint errors) per run and body part, weighted by labeled count."""
    j = analysis.joint_errors(results)
    assert set(j.run) == {"supervised", "consistency", "dual"} and set(j.part) == {"face", "arms", "legs"}
    assert set(j[j.run == "dual"].net) == {"net0", "net1", "ens"} and (j.step == 300).all()
    p = analysis.part_errors(j).set_index(["run", "part"])
    one = j[(j.run == "supervised") & (j.part == "face")]
    assert p.loc[("supervised", "face"), "good"] == pytest.approx((one.good * one.labeled).sum() / one.labeled.sum())
    # the collapsed run localises fewer faces precisely than supervised does
    assert p.loc[("consistency", "face"), "good"] < p.loc[("supervised", "face"), "good"]


def test_heatmap_gallery_and_evolution_draw_one_column_per_method(results):
    from analysis.figures import evolution_panels, gallery_panels
    from collapse.probes import GALLERY
    runs, _, _ = analysis.load(results)
    labels = ["supervised", "consistency (w 10)", "dual"]  # plot order
    fig = gallery_panels(runs)
    assert len(fig.axes) == GALLERY * 3
    assert [ax.get_title().split("\n")[0] for ax in fig.axes[:3]] == labels
    assert all(ax.get_title().endswith("step 300") for ax in fig.axes[:3])
    assert all(len(ax.images) == 2 for ax in fig.axes)  # the crop and its heatmap in every panel
    evo = evolution_panels(runs, columns=5)
    assert len(evo.axes) == 3 * 5 and [evo.axes[5 * r].get_ylabel() for r in range(3)] == labels
    assert [ax.get_title() for ax in evo.axes[:5]] == ["step 0", "step 75", "step 150", "step 225", "step 300"]
    # what it draws is the run's own heatmaps: the first panel's overlay is the stored final heatmap
    g = np.load(os.path.join(results, "supervised", "gallery.npz"))
    assert np.array_equal(fig.axes[0].images[1].get_array(), g["heat"][-1, 0].astype(np.float32))


def test_report_table_layout(results, tmp_path, capsys):
    assert main(["report", results, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [l for l in out.splitlines() if l.startswith("| ")]
    assert "30 labeled" in rows[0] and [r.split("|")[1].strip() for r in rows[1:]] == ["supervised", "consistency (w 10)", "dual"]
    assert "±" in rows[1]
    tex = (tmp_path / "table.tex").read_text()
    assert r"\begin{tabular}{lc}" in tex and r"$\pm$" in tex and "table.md" in os.listdir(tmp_path)


def test_not_a_results_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("collapse: error: no runs in") and len(err.strip().splitlines()) == 1
    assert main(["figures", str(tmp_path / "nope"), "--out", str(tmp_path / "f")]) == 2
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("name", ["collapse_curves", "response_distributions", "paper_figures"])
def test_notebooks_execute_on_a_results_folder(results, tmp_path, name):
    import nbformat
    from nbclient import NotebookClient
    from conftest import REPO
    nb = nbformat.read(os.path.join(REPO, "notebooks", f"{name}.ipynb"), as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source.startswith("RESULTS = ")  # the one variable a user edits
    first.source = first.source.replace('"../results/demo"', repr(results)).replace('"figures"', repr(str(tmp_path / "fig")))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    if name == "paper_figures":
        assert os.path.getsize(tmp_path / "fig" / "final_ap.pdf") > 10_000


def test_run_folders_of_older_versions_still_load():
    """tests/data/old_results: two demo runs written before methods owned their settings (every method's
    settings in each config.yaml). They load, get their labels, and enter the collapse table."""
    old = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "old_results")
    runs, metrics, probes = analysis.load(old)
    assert runs["method.tau"].notna().all()  # the old format: mean_teacher's config holds threshold's tau
    assert sorted(runs.label) == ["mean_teacher (ema 0.99, eval teacher)", "supervised"]  # what they ran
    t = analysis.collapse_table(runs, probes, metrics).set_index("label")
    assert t.loc["supervised", "vs_supervised"] == 1.0
    assert abs(t.loc["mean_teacher (ema 0.99, eval teacher)", "AP"] - 0.041) < 5e-4  # the demo table of that day


def _empty(results):
    path = os.path.join(os.path.dirname(results), "no_runs")
    os.makedirs(path, exist_ok=True)
    return path

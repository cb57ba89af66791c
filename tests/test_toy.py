"""The 2-D toy study, trained for real with collapse.methods: naive consistency moves the boundary into
the minor class, easy->hard (single and dual) does not."""
import os

from analysis.toy import ToySettings, displacement, run
from collapse.cli import main


def test_naive_consistency_moves_the_boundary_into_the_minor_class_easy_hard_does_not():
    measures, grids, _ = run(ToySettings(steps=800, snapshots=(0, 400, 800)))
    d = displacement(measures)
    assert d.loc["naive consistency", "shift_vs_supervised"] > 0.2
    assert d.loc["naive consistency", "minor_called_background"] > d.loc["supervised", "minor_called_background"] + 0.1
    for label in ("easy->hard (single)", "easy->hard (dual)"):
        assert abs(d.loc[label, "shift_vs_supervised"]) < 0.1
        assert d.loc[label, "minor_called_background"] < d.loc["supervised", "minor_called_background"] + 0.05
    assert set(grids["supervised"]) == {0, 400, 800}


def test_toy_command_writes_figure_and_measures(tmp_path, capsys):
    assert main(["toy", "--out", str(tmp_path), "--steps", "60"]) == 0
    assert "shift_vs_supervised" in capsys.readouterr().out
    for name in ("toy_boundary.png", "toy_boundary.pdf", "toy_measures.csv"):
        assert os.path.getsize(tmp_path / name) > 1000
    assert main(["toy", "--out", str(tmp_path / "x"), "--minor-share", "0.7"]) == 2
    assert not (tmp_path / "x").exists()

"""The comparison table in the paper's layout: rows = methods (+ augmentation), columns = labeled-set
sizes, cells = final OKS AP x 100 as mean +- std over seeds (n seeds shown when not all cells agree)."""
import os

from collapse.runs import FINISHED, atomic_write_text

from .detector import final_ap
from .results import load, method_order


def comparison(runs, metrics):
    """DataFrame (index label, columns labeled size) of 'mean +- std' strings, and the numeric frame."""
    t = runs.assign(AP=100 * final_ap(runs, metrics).values, labeled=runs.get("data.labeled", -1))
    t = t[t.status.isin(FINISHED)].dropna(subset=["AP"])
    g = t.groupby(["label", "labeled"]).AP.agg(["mean", "std", "count"]).reset_index()
    g["std"] = g["std"].fillna(0.0)
    g["cell"] = [f"{m:.1f} ± {s:.1f}" + ("" if n > 1 else " (1 seed)") for m, s, n in zip(g["mean"], g["std"], g["count"])]
    cells = g.pivot(index="label", columns="labeled", values="cell")
    cells = cells.loc[sorted(cells.index, key=method_order)]
    cells.columns = [("all" if c == -1 else f"{c} labeled") for c in cells.columns]
    return cells.fillna("–"), g


def to_latex(cells):
    cols = list(cells.columns)
    lines = [r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
             "Method & " + " & ".join(cols) + r" \\", r"\midrule"]
    for label, row in cells.iterrows():
        esc = lambda s: str(s).replace("_", r"\_").replace("±", r"$\pm$").replace("–", "--")
        lines.append(esc(label) + " & " + " & ".join(esc(v) for v in row.values) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def report(results_dir, out_dir=None):
    """Markdown table (returned, for printing) and, with out_dir, table.md and table.tex written there."""
    runs, metrics, _ = load(results_dir)
    cells, _ = comparison(runs, metrics)
    md = "final OKS AP x 100, mean ± std over seeds\n\n" + cells.to_markdown() + "\n"
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_text(os.path.join(out_dir, "table.md"), md)
        atomic_write_text(os.path.join(out_dir, "table.tex"), to_latex(cells))
    return md

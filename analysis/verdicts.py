"""`collapse claims`: which of the paper's claims a results folder supports, by how much, and how sure.

Runs speak to a claim only in pairs: the same setting apart from the method (data, model, augmentation,
schedule, warm start; analysis.detector.setting_key) and the same seed. Each row gives the paired
difference over seeds (final OKS AP in points x 100, and the unlabeled peak response relative to
supervised), its 95% t interval, its two-sided p and that p adjusted by Holm within the row's family
(its claim group in one setting: the C2 rows share the supervised arm, the F rows one grid...), and a
verdict on the adjusted p: holds, fails (the opposite sign), equivalent (inside +-`margin` AP points by two
one-sided tests, adjusted alike), inconclusive (none of these, or fewer than 3 seeds), or "no runs" when the
folder cannot test the claim. "Inconclusive" is not "equal": only "equivalent" says two methods tie.
A folder with several settings (say, two labeled-set sizes) gets one row per setting.
"""
import glob
import json
import os

import numpy as np
import pandas as pd
from scipy import stats

from collapse.methods import METHODS

from collapse.errors import UserError
from collapse.runs import FINISHED, atomic_write_json, atomic_write_text

from .detector import collapse_table, final_ap, setting_columns, setting_key
from .results import load
from .stats import MIN_SEEDS, equivalence_p, holm, p_value, paired_interval, verdict

FAILED_ATTEMPTS = [  # the paper's figure of attempts that collapse or do not help (labels as analysis gives them)
    ("A1", "threshold (tau 0.2)"), ("A2", "threshold (tau 0.4)"), ("A3", "threshold (tau 0.6)"),
    ("A4", "threshold (tau 0.8)"), ("B1", "mean_teacher (ema 0.99)"), ("B2", "mean_teacher (ema 0.999)"),
    ("B1e", "mean_teacher (ema 0.99, eval teacher)"), ("B2e", "mean_teacher (ema 0.999, eval teacher)"),
    ("C", "reweight"), ("D1", "easy_hard (easy_easy)"), ("D2", "easy_hard (hard_hard)"),
    ("D3", "easy_hard (hard_easy)")]
FACTORS = [  # dual vs single, one factor at a time (configs/grids/dual_vs_single.yaml)
    ("F1", "a peer teaches (dual vs single), ratio 1:2, two inits", "dual", "easy_hard (sup 0.5)"),
    ("F2", "a peer teaches (dual vs single), ratio 1:1, two inits", "dual (sup 1)", "easy_hard"),
    ("F3", "ratio 1:2 vs 1:1, single", "easy_hard (sup 0.5)", "easy_hard"),
    ("F4", "ratio 1:2 vs 1:1, dual", "dual", "dual (sup 1)"),
    ("F5", "two inits vs one, dual 1:2", "dual", "dual (one init)"),
    ("F6", "two inits vs one, dual 1:1", "dual (sup 1)", "dual (sup 1) (one init)")]
LATER = [  # the later recipes over the study's (MultiAugs' Table 1, COCO-1K: 49.7 and 45.5 vs 44.6 and 42.1; SSPCM 46.9)
    ("L1", "MultiAugs dual (net 0) ends above dual (net 0)", "multi_augs (dual, joco+jccm)", "dual"),
    ("L2", "MultiAugs single ends above easy->hard single", "multi_augs (single, jc+jo+joco+jccm)", "easy_hard"),
    ("L3", "SSPCM's student ends above dual (net 0)", "sspcm", "dual"),
    # why MultiAugs does or does not, one factor at a time (configs/grids/later_factors.yaml)
    ("M1", "the occluded easy view resampled (MultiAugs' way) vs the stored crop, JC5, dual",
     "multi_augs (dual, jc)", "dual + JC5"),
    ("M2", "a second path (JCCM) beside JOCO, weight 1 each (doubles the unsupervised share)",
     "multi_augs (dual, joco+jccm)", "multi_augs (dual, joco)"),
    ("M3", "two paths at weight 0.5 each (dual's loss ratio) vs 1 each", "multi_augs (dual, joco+jccm) (w 0.5)",
     "multi_augs (dual, joco+jccm)"),
    ("M4", "two paths at dual's loss ratio end above dual", "multi_augs (dual, joco+jccm) (w 0.5)", "dual"),
    ("M5", "SSPCM's position-inconsistency correction vs its student taught the teachers' plain average",
     "sspcm", "sspcm (average target)")]
COLUMNS = ["claim", "statement", "runs", "setting", "seeds", "effect_AP", "low", "high", "interval", "p", "p_adj",
           "effect_response", "collapsed", "verdict", "why"]
# equivalence margin in AP points (x 100): below the smallest gain the paper reports between two of its methods
# at 1K labels (dual + JC over dual + RA, 0.9 points; dual over single 3.0), a difference no reader calls a gain
MARGIN = 0.5
WHY_TAU = 0.5  # the pseudo-label threshold the `why` column quotes (collapse/probes.py PL_TAUS)


RUN_COLUMNS = ["run", "label", "seed", "setting", "variant", "AP", "AP_ens", "vs_supervised", "collapsed", "stopped",
               "quantity0", "quantity1", "quality0", "quality1"]


class ClaimsError(UserError):
    """A results folder whose runs cannot be paired (two runs of one setting and seed)."""


def variant_key(runs):
    """Per run, its method settings as 'key=value|...' (every method.* key it holds, at their defaults where
    older runs lack them): runs of one label whose settings differ (rampup, fg_weight, counts...) are two
    variants."""
    cols = sorted(c for c in runs.columns if c.startswith("method.") and c != "method.name")
    if not cols:
        return pd.Series("", index=runs.index)
    text = lambda v: f"{v:g}" if isinstance(v, float) else str(v)
    return runs[cols].apply(lambda r: "|".join(f"{c[7:]}={text(v)}" for c, v in r.items() if _present(v)), axis=1)


def _present(v):
    return not (isinstance(v, float) and v != v)


def run_table(runs, metrics, probes):
    """One row per finished run: run, label, seed, setting (across seeds), variant (its method settings),
    AP, AP_ens, vs_supervised, collapsed, stopped (ended early by train.stop_on_collapse), and the
    pseudo-label quantity / quality (tau WHY_TAU) of net 0 at its first and last probe. Two runs of one
    setting, variant and seed are refused."""
    runs = runs[runs.status.isin(FINISHED)].reset_index(drop=True)
    if runs.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    t = collapse_table(runs, probes, metrics)
    steps = runs["train.steps"] if "train.steps" in runs else pd.Series(np.nan, index=runs.index)
    info = runs.assign(setting=setting_key(runs, across_seeds=True), variant=variant_key(runs),
                       AP_ens=final_ap(runs, metrics, "AP/ens").values,
                       stopped=pd.to_numeric(runs.get("steps"), errors="coerce") < pd.to_numeric(steps, errors="coerce"))
    t = t.merge(info[["run", "setting", "variant", "AP_ens", "stopped"]], on="run")
    twice = t[t.duplicated(["setting", "label", "variant", "seed"], keep=False)].sort_values("run")
    if len(twice):
        a, b = twice.run.iloc[:2]
        raise ClaimsError(f"runs {a} and {b} are one setting and seed ({twice.label.iloc[0]}, seed "
                          f"{twice.seed.iloc[0]}): remove one, or give it another seed")
    p = probes[(probes.split == "unlabeled") & (probes.net == 0) & (probes.joint == -1) & (probes.param == WHY_TAU)
               & probes.name.isin(["pl_quantity", "pl_quality"])].sort_values("step")
    ends = p.groupby(["run", "name"]).value.agg(["first", "last"]).unstack("name")
    for col, (end, name) in {"quantity0": ("first", "pl_quantity"), "quantity1": ("last", "pl_quantity"),
                             "quality0": ("first", "pl_quality"), "quality1": ("last", "pl_quality")}.items():
        t[col] = t.run.map(ends[(end, name)]) if (end, name) in ends else np.nan
    return t[RUN_COLUMNS]


def why(A):
    """What the probes say about the runs of side a: their pseudo-labels' quantity and quality, first -> last."""
    q = A[["quantity0", "quantity1", "quality0", "quality1"]].mean()
    if q.isna().all():
        return ""
    f = lambda v: "–" if pd.isna(v) else f"{v:.2f}"
    return (f"quantity {f(q.quantity0)}→{f(q.quantity1)}, quality {f(q.quality0)}→{f(q.quality1)} "
            f"(peak > {WHY_TAU:g})")


def describe(runs, settings):
    """A readable name per setting key: the config columns whose values tell the settings apart."""
    cols = setting_columns(runs, across_seeds=True)
    frame = runs.assign(setting=setting_key(runs, across_seeds=True)).drop_duplicates("setting").set_index("setting")
    differ = [c for c in cols if frame[c].astype(str).nunique() > 1]
    return {s: ", ".join(f"{c}={frame.loc[s, c]}" for c in differ) or "all runs" for s in settings}


def paired(table, a, b):
    """Per setting and pair of variants where both labels ran: (seeds both have, A, B indexed by seed, what
    tells the variants apart). A label run in several variants of one setting (say, two rampups) gives
    one pair per variant, never one averaged pair."""
    out = {}
    for setting, g in table.groupby("setting"):
        for side in (a, b):
            if g[g.label == side].variant.nunique() > 1:
                break
        else:
            side = None
        for va, A in g[g.label == a].groupby("variant"):
            for vb, B in g[g.label == b].groupby("variant"):
                A, B = A.set_index("seed"), B.set_index("seed")
                seeds = sorted(set(A.index) & set(B.index))
                if seeds:
                    out[(setting, va, vb)] = (seeds, A.loc[seeds], B.loc[seeds],
                                              _differ(g[g.label == side], va if side == a else vb) if side else "")
    return out


def _differ(runs_of_label, variant):
    """The method settings in which `variant` differs from the label's other variants, as 'key=value'."""
    parse = lambda v: dict(kv.split("=", 1) for kv in v.split("|") if kv)
    others = [parse(v) for v in runs_of_label.variant.unique()]
    mine = parse(variant)
    return ", ".join(f"{k}={v}" for k, v in mine.items() if len({o.get(k) for o in others}) > 1)


def compare(table, names, claim, statement, a, b, direction, value="AP", b_value="AP", margin=MARGIN):
    """Rows of one paired comparison (one per setting and pair of variants), or one 'no runs' row; verdicts
    are decided later, family by family (decide). Runs stopped early at their collapse are left out of AP
    comparisons (their AP is at another step), and the row says how many."""
    rows = []
    for (setting, _, _), (seeds, A, B, variant) in paired(table, a, b).items():
        keep = ~(A.stopped.fillna(False).astype(bool) | B.stopped.fillna(False).astype(bool))
        diffs = A[value].values[keep.values] - B[b_value].values[keep.values]
        mean, lo, hi, n, how = paired_interval(diffs)
        resp = paired_interval(A.vs_supervised.values - B.vs_supervised.values)[0]
        collapsed = int(round(A.collapsed.sum()))
        left = int((~keep).sum())
        rows.append(dict(claim=claim, statement=statement, runs=f"{a} - {b}",
                         setting=", ".join(x for x in (names[setting], variant) if x and x != "all runs") or "all runs",
                         seeds=n, effect_AP=100 * mean, low=100 * lo, high=100 * hi, interval=how, p=p_value(diffs),
                         p_eq=equivalence_p(diffs, margin / 100), direction=direction, mean=mean,
                         effect_response=resp, collapsed=f"{collapsed}/{len(seeds)}",
                         why=why(A) + (f"; {left} seed(s) stopped early at their collapse left out" if left else "")))
    return rows or [dict(claim=claim, statement=statement, runs=f"{a} - {b}", verdict="no runs")]


def collapse_rate(table, names, claim, statement, a, b):
    """C1a: how often the detector fires for `a` against `b` in the same seeds (Fisher's exact test on the
    two counts; the effect is the difference of the two rates)."""
    rows = []
    for (setting, _, _), (seeds, A, B, variant) in paired(table, a, b).items():
        n = len(seeds)
        ka, kb = (int(round(X.collapsed.sum())) for X in (A, B))
        p = stats.fisher_exact([[ka, n - ka], [kb, n - kb]]).pvalue if n else np.nan
        rows.append(dict(claim=claim, statement=statement, runs=f"{a} - {b} (detector)",
                         setting=", ".join(x for x in (names[setting], variant) if x and x != "all runs") or "all runs",
                         seeds=n, interval="Fisher", p=p, direction=+1, mean=(ka - kb) / max(n, 1),
                         collapsed=f"{ka}/{n} vs {kb}/{n}", why=why(A)))
    return rows or [dict(claim=claim, statement=statement, runs=f"{a} - {b} (detector)", verdict="no runs")]


def family(claim):
    """The claims adjusted together: C1 (a, b), the C2 rows (one supervised arm), C3-C5, C6, C7, and the F, L
    and M grids."""
    code = claim.split(" ")[0]
    if code.startswith(("C1", "C2", "C6", "C7")):
        return code[:2]
    return "C3-C5" if code[0] == "C" else code[0]


def decide(rows):
    """Holm within each (family, setting) over the rows that have runs; each row's verdict from its adjusted
    p (and its adjusted equivalence p)."""
    frame = pd.DataFrame(rows)
    if "p" not in frame:
        return frame
    tested = frame.verdict.isna() if "verdict" in frame else pd.Series(True, index=frame.index)
    frame["family"] = frame.claim.map(family)
    for _, g in frame[tested].groupby(["family", "setting"], dropna=False):
        frame.loc[g.index, "p_adj"] = holm(g.p.values)
        frame.loc[g.index, "p_eq_adj"] = holm(g.p_eq.values) if "p_eq" in g else np.nan
    for i in frame[tested].index:
        r = frame.loc[i]
        frame.loc[i, "verdict"] = verdict(r.p_adj, r.get("p_eq_adj", np.nan), r["mean"], r.seeds, r.direction)
    return frame


def trend(table, runs, label="consistency", along="data.sigma"):
    """C6: per seed (and other setting), the least-squares slope of `label`'s response vs supervised over
    `along`; rows of the interval over seeds of that slope (claim: it rises)."""
    if along not in runs:
        return [dict(claim="C6", statement=f"{label}'s response vs supervised rises with {along}",
                     runs=f"{label} over {along}", verdict="no runs")]
    t = table.merge(runs[["run", along]].assign(  # unsup_weight: a column only where some run's method reads it
        weight=runs.get("method.unsup_weight", 1.0), rest=setting_key(runs, across_seeds=True, without=(along,))), on="run")
    t = t[t.label.str.split(" ").str[0] == label]
    rows = []
    for (rest, weight), g in t.groupby(["rest", "weight"]):
        if g[along].nunique() < 2:
            continue
        slopes = [np.polyfit(s[along].astype(float), s.vs_supervised, 1)[0] for _, s in g.groupby("seed")
                  if s[along].nunique() >= 2 and s.vs_supervised.notna().all()]
        mean, lo, hi, n, how = paired_interval(slopes)
        rows.append(dict(claim="C6", statement=f"{label}'s response vs supervised rises with {along} "
                         "(slope per seed)", runs=f"{label} (w {weight:g}) over {along} "
                         f"{', '.join(f'{v:g}' for v in sorted(g[along].unique()))}", setting=f"unsup_weight={weight:g}", seeds=n,
                         effect_response=mean, low=lo, high=hi, interval=how, p=p_value(slopes), direction=+1,
                         mean=mean))
    return rows or [dict(claim="C6", statement=f"{label}'s response vs supervised rises with {along}",
                         runs=f"{label} over {along}", verdict="no runs")]


def toy_rows(results_dir):
    """C7: every toy_measures.csv below the folder is one toy seed; naive consistency's final boundary minus
    easy->hard's (x units toward the minor class), paired by file."""
    diffs = []
    for path in sorted(glob.glob(os.path.join(results_dir, "**", "toy_measures.csv"), recursive=True)):
        m = pd.read_csv(path)
        last = m[(m.step == m.step.max()) & (m.measure == "boundary_x")].set_index("method").value
        if {"naive consistency", "easy->hard (single)"} <= set(last.index):
            diffs.append(last["naive consistency"] - last["easy->hard (single)"])
    statement = "2-D toy: naive consistency moves the boundary into the minor class further than easy->hard"
    if not diffs:
        return [dict(claim="C7", statement=statement, runs="toy_measures.csv", verdict="no runs")]
    mean, lo, hi, n, how = paired_interval(diffs)
    return [dict(claim="C7", statement=statement, runs="naive - easy->hard (boundary x)", setting="toy",
                 seeds=n, effect_response=mean, low=lo, high=hi, interval=how, p=p_value(diffs), direction=+1, mean=mean)]


def claims(results_dir, margin=MARGIN):
    """The claims table of a results folder (DataFrame with COLUMNS); `margin`: equivalence margin, AP points."""
    runs, metrics, probes = load(results_dir)
    runs = runs[runs.method.isin(list(METHODS))]  # runs of other trainers (collapse.monitor) enter no paired claim
    table = run_table(runs, metrics, probes)
    names = describe(runs[runs.run.isin(table.run)], table.setting.unique()) if len(table) else {}
    rows = collapse_rate(table, names, "C1a", "naive consistency collapses (the detector fires more often than "
                         "for supervised)", "consistency", "supervised")
    rows += compare(table, names, "C1b", "naive consistency ends below supervised", "consistency", "supervised", -1,
                    margin=margin)
    for code, label in FAILED_ATTEMPTS:
        rows += compare(table, names, f"C2 {code}", "ends at or below supervised (equivalent: at)", label,
                        "supervised", -1, margin=margin)
    rows += compare(table, names, "C3", "easy->hard single ends above supervised", "easy_hard", "supervised", +1,
                    margin=margin)
    rows += compare(table, names, "C4", "dual (net 0) ends above single", "dual", "easy_hard", +1, margin=margin)
    rows += compare(table, names, "C4 ens", "dual (ensemble of its nets) ends above single", "dual", "easy_hard",
                    +1, value="AP_ens", margin=margin)
    rows += compare(table, names, "C5 JC", "joint cutout raises dual", "dual + JC5", "dual", +1, margin=margin)
    rows += compare(table, names, "C5 RA", "RandAugment raises dual", "dual + RA", "dual", +1, margin=margin)
    rows += trend(table, runs[runs.run.isin(table.run)]) if len(table) else trend(table, runs)
    rows += toy_rows(results_dir)
    for code, statement, a, b in FACTORS + LATER:
        rows += compare(table, names, code, statement, a, b, +1, margin=margin)
    return decide(rows).reindex(columns=COLUMNS)


def to_markdown(frame, margin=MARGIN):
    f = frame.copy()
    for c in ("effect_AP", "low", "high", "effect_response"):
        f[c] = f[c].map(lambda v: "" if pd.isna(v) else f"{v:+.2f}")
    for c in ("p", "p_adj"):
        f[c] = f[c].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    f["interval"] = [("" if pd.isna(how) else how if lo in ("", None) or pd.isna(lo) else f"[{lo}, {hi}] ({how})")
                     for lo, hi, how in zip(f.low, f.high, f.interval)]
    f = f.drop(columns=["low", "high"]).astype(object).where(lambda x: x.notna(), "")
    f["seeds"] = f.seeds.map(lambda v: "" if v == "" else str(int(v)))
    return ("Paired differences over seeds (a - b). effect_AP: final OKS AP x 100; effect_response: unlabeled "
            "peak response relative to supervised (C6: its slope; C7: boundary x); raw 95% t interval and p; "
            "p_adj: Holm within the claim's family and setting, which the verdict uses; equivalent: inside "
            f"+-{margin:g} AP points by two one-sided tests; a verdict needs >= {MIN_SEEDS} seeds. C1a compares "
            "how often the detector fires with supervised's (Fisher's exact test).\n\n"
            + f.to_markdown(index=False, disable_numparse=True) + "\n")


def write(results_dir, out_dir=None, margin=MARGIN):
    """claims.md and claims.json in out_dir (default: the results folder); returns the Markdown."""
    frame = claims(results_dir, margin)
    out_dir = out_dir or results_dir
    os.makedirs(out_dir, exist_ok=True)
    md = to_markdown(frame, margin)
    atomic_write_text(os.path.join(out_dir, "claims.md"), md)
    records = json.loads(frame.to_json(orient="records"))
    atomic_write_json(os.path.join(out_dir, "claims.json"), records)
    return md

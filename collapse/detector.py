"""The collapse index and detector: one rule for the trainer's early stop (`train.stop_on_collapse`), the
monitor's (CollapseMonitor) and `analysis` (the `collapsed` column, the claims' C1a).

A run's series are per probe, in step order: the unlabeled probe set's mean max response (the heatmaps'
peak), the quantity and quality of the pseudo-labels a net would hand out (monitor.py's pl_quantity and
pl_quality at QUANTITY_TAU) and the validation AP."""
import numpy as np

COLLAPSE_RATIO = 0.5     # one signal: the response fell below half of the run's own peak ...
COLLAPSE_PATIENCE = 2    # ... at this many consecutive probes ...
COLLAPSE_FLOOR = 0.05    # ... after the peak had exceeded this (an untrained net is not a collapsed one)
FADE_RATIO = 0.7         # two signals: each below this share of its own running peak, at the same probes
QUANTITY_TAU = 0.2       # the pseudo-label threshold whose quantity and quality the detector reads


def collapse_index(responses):
    """Collapse index per probe: the unlabeled mean max response relative to the run's own running peak
    (1 = at its best so far, 0 = every pixel called background). responses: values in step order."""
    r = np.asarray(responses, dtype=float)
    peak = np.maximum.accumulate(np.nan_to_num(r, nan=0.0)) if len(r) else r
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, r / np.where(peak > 0, peak, 1), 1.0), peak


def first_streak(steps, low, patience):
    """The step at which the first run of `patience` consecutive True values of `low` begins, or None."""
    run = 0
    for i, is_low in enumerate(low):
        run = run + 1 if is_low else 0
        if run >= patience:
            return int(steps[i - patience + 1])
    return None


def collapse_step(steps, responses, ratio=COLLAPSE_RATIO, patience=COLLAPSE_PATIENCE, floor=COLLAPSE_FLOOR):
    """One signal: the first step of `patience` consecutive probes with index < ratio (peak above floor), or None."""
    index, peak = collapse_index(responses)
    return first_streak(steps, (index < ratio) & (peak > floor), patience)


def _low(values, n, fade, floor):
    """Per probe: the series is below `fade` of its own running peak (which exceeded floor); False where it
    is missing."""
    if values is None:
        return np.zeros(n, dtype=bool)
    index, peak = collapse_index(values)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num((index < fade) & (peak > floor), nan=False).astype(bool)


def _has(values):
    return values is not None and np.isfinite(np.asarray(values, dtype=float)).any()


def detect(steps, response, quantity=None, quality=None, ap=None, ratio=COLLAPSE_RATIO, patience=COLLAPSE_PATIENCE,
           floor=COLLAPSE_FLOOR, fade=FADE_RATIO):
    """The detector -> (step the run collapsed at or None, which rule decided). Two signals must agree at
    `patience` consecutive probes, each below `fade` of its own running peak:
      1. the heatmaps fade or go wrong: the unlabeled response, or the quality (PCK) of its pseudo-labels;
      2. the run loses what it knew: the quantity of its pseudo-labels (peak > QUANTITY_TAU), or its AP.
    A healthy run whose peaks flatten keeps its pseudo-labels and AP (one signal); a collapse onto wrong
    locations loses quality and AP; a slow fade loses response and quantity. Without quantity, quality
    and AP (a monitored run without joints, runs older than these probes): one signal, the response below
    `ratio` of its peak. Series are per probe, in step order (AP: the last evaluation at or before it)."""
    n = len(steps)
    if not (_has(quantity) or _has(quality) or _has(ap)):
        return collapse_step(steps, response, ratio, patience, floor), "response only"
    # the response must have passed `floor` (an untrained net is not a collapsed one); a share (quantity,
    # quality, AP) counts once it was above zero: a net that had a few confident joints and lost them lost them
    fading = _low(response, n, fade, floor) | _low(quality, n, fade, 0.0)
    losing = _low(quantity, n, fade, 0.0) | _low(ap, n, fade, 0.0)
    return first_streak(steps, fading & losing, patience), "two signals"


def detector_series(rows, metrics=(), net=0):
    """From probe rows (ProbeRow) and metric rows (dicts): steps and the series `detect` reads, for the
    unlabeled probe set and net `net` (AP: AP or AP/net<net>)."""
    def series(name, param=None):
        return {r.step: r.value for r in rows if r.split == "unlabeled" and r.net == net and r.joint == -1
                and r.name == name and (param is None or r.param == param)}
    response = series("max_response")
    steps = sorted(response)
    quantity, quality = series("pl_quantity", QUANTITY_TAU), series("pl_quality", QUANTITY_TAU)
    evals = sorted((m["step"], m["value"]) for m in metrics if m.get("split") == "val"
                   and m.get("name") in ("AP", f"AP/net{net}"))
    ap = [next((v for s, v in reversed(evals) if s <= step), np.nan) for step in steps] if evals else None
    pick = lambda d: [d.get(s, np.nan) for s in steps] if d else None
    return dict(steps=steps, response=[response[s] for s in steps], quantity=pick(quantity), quality=pick(quality),
                ap=ap)


def unlabeled_response(rows, net=0):
    """(steps, responses) of the unlabeled mean max response from probe rows (ProbeRow)."""
    pts = sorted((r.step, r.value) for r in rows if r.split == "unlabeled" and r.net == net and r.joint == -1
                 and r.name == "max_response")
    return [p[0] for p in pts], [p[1] for p in pts]

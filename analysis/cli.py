"""The analysis commands of `collapse`: demo (its table, figure and verdicts), figures, report, claims, toy.

The library (collapse/) never imports this package; `collapse/cli.py` finds these commands through the
`collapse.commands` entry point this package declares (pyproject.toml), so imports run one way only.
As there, each command imports what it runs (torch, matplotlib and scipy are slow to import, and this
module is loaded whenever `collapse` starts)."""
import os

from collapse.errors import ConfigError

from .toy_settings import DESCRIPTION, add_arguments


def _error(msg):
    raise ConfigError(msg)


def cmd_demo(args):
    from collapse import demo
    from collapse.runs import atomic_write_text

    from .verdicts import claims, to_markdown
    from .demo import demo_figure, demo_table
    args.grid = args.grid or demo.GRID
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    except ValueError:
        raise ConfigError(f"--seeds takes a comma-separated list of integers, got '{args.seeds}'")
    for seed in seeds:
        print(f"collapse demo: the study's methods on the synthetic set, seed {seed}, {args.jobs} at a time")
        names = demo.run_all(args.grid, args.out, seed, args.overrides, args.jobs)
        table = demo_table(args.out, names.values())
        print(table.to_markdown(floatfmt=".3f"))
    demo_figure(args.out, names.values(), os.path.join(args.out, "collapse_curves"))
    atomic_write_text(os.path.join(args.out, "table.md"), table.to_markdown(floatfmt=".3f") + "\n")
    print(f"figure: {os.path.join(args.out, 'collapse_curves.png')} (and .pdf), table: table.md (seed {seeds[-1]})")
    found = claims(args.out)
    found = found[found.verdict != "no runs"]
    print("\nthe paper's claims these runs can test (every seed in the folder; `collapse claims` for all):")
    print(to_markdown(found), end="")


def cmd_figures(args):
    from . import figures
    print("\n".join(figures.write_figures(args.results, args.out)))


def cmd_report(args):
    from . import tables
    from .verdicts import write as write_claims
    print(tables.report(args.results, args.out), end="")
    if args.out:
        write_claims(args.results, args.out)
        print(f"wrote {os.path.join(args.out, 'table.md')}, table.tex and, beside them, claims.md (the paper's claims "
              "with intervals over seeds: collapse claims)")
    else:
        print(f"the paper's claims with intervals over seeds: collapse claims {args.results}")


def cmd_claims(args):
    from .verdicts import write as write_claims
    if not args.margin > 0:
        raise ConfigError(f"--margin must be a positive number of AP points, got {args.margin}")
    print(write_claims(args.results, args.out, args.margin), end="")
    print(f"wrote {os.path.join(args.out or args.results, 'claims.md')} and claims.json")


def cmd_toy(args):
    from . import toy
    toy.run_cli(args, _error)


def commands(sub):
    """Add the analysis commands to the `collapse` command's subparsers (the collapse.commands entry point)."""
    de = sub.add_parser("demo", help="the main job: the study's methods on the embedded synthetic set",
                        description="Prepare the synthetic set if absent, run the demo grid (configs/grids/demo.yaml: "
                        "a supervised stage per seed, then supervised, consistency, mean_teacher, threshold, reweight, "
                        "easy_hard and dual continue from it) through the grid machinery (resumable); print the table, "
                        "write the collapse-curve figure, and print the verdicts on the paper's claims the folder's "
                        "runs can test.")
    de.add_argument("--out", default="results/demo", help="results folder (default results/demo)")
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--seeds", help="several seeds in turn, e.g. 0,1,2 (the claims need >= 3 for a verdict)")
    de.add_argument("--grid", default=None, help="the demo grid (default configs/grids/demo.yaml)")
    de.add_argument("--jobs", type=int, default=2, help="runs at once, one CPU thread each (default 2)")
    de.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    de.set_defaults(func=cmd_demo)

    fi = sub.add_parser("figures", help="paper-ready figures of a results folder (PNG + PDF)",
                        description="Collapse curves, response distributions (ridge), fg/bg boundary drift and "
                        "final-AP bars of every run under RESULTS; PDF with embedded TrueType fonts, and PNG.")
    fi.add_argument("results", help="results folder (runs anywhere below it)")
    fi.add_argument("--out", required=True, help="folder for the figures")
    fi.set_defaults(func=cmd_figures)

    re_ = sub.add_parser("report", help="the comparison table (Markdown; LaTeX too with --out)",
                         description="Rows = methods (+ augmentation), columns = labeled-set sizes, cells = final "
                         "OKS AP x 100, mean +- std over seeds.")
    re_.add_argument("results", help="results folder")
    re_.add_argument("--out", help="also write table.md and table.tex here")
    re_.set_defaults(func=cmd_report)

    cl = sub.add_parser("claims", help="the paper's claims as verdicts with 95%% intervals over seeds",
                        description="Pairs the runs of a results folder by setting and seed and gives, per claim of "
                        "the paper (C1-C7, the dual-vs-single factors F1-F6, the later recipes L/M), the paired "
                        "difference in final AP and unlabeled response, its 95%% t interval, its p adjusted by Holm "
                        "within the claim's family, and a verdict: holds, fails, equivalent (inside --margin by two "
                        "one-sided tests), inconclusive or no runs.")
    cl.add_argument("results", help="results folder")
    cl.add_argument("--margin", type=float, default=0.5, help="equivalence margin in AP points (default 0.5: below "
                    "the smallest gain the paper reports between two of its methods at 1K labels)")
    cl.add_argument("--out", help="folder for claims.md and claims.json (default: the results folder)")
    cl.set_defaults(func=cmd_claims)

    to = sub.add_parser("toy", help="the 2-D toy study of the decision boundary", description=DESCRIPTION)
    add_arguments(to)
    to.set_defaults(func=cmd_toy)

"""Forest, funnel and shrinkage plots of BCG (log risk ratios) and eight schools.

For each data set: the classical random-effects meta-analysis (REML) and a NUTS posterior of
the normal-normal hierarchical model, side by side in ``bm.plots.forest`` (per-task
estimates with their weights, the partial-pooling intervals, the pooled diamonds and the
prediction intervals), ``bm.plots.funnel`` and ``bm.plots.shrinkage``. Writes six PNGs,
``{bcg,eight_schools}_{forest,funnel,shrinkage}.png``, into ``--out``.

Run:  python examples/meta_plots.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpyro.distributions as dist

import bayesmeta as bm

CASES = [
    # name, data, prior of tau, axis label, title
    ("bcg", bm.datasets.bcg, dist.HalfNormal(1.0), "log risk ratio", "BCG vaccine trials"),
    (
        "eight_schools",
        bm.datasets.eight_schools,
        dist.HalfCauchy(5.0),
        "effect (SAT points)",
        "Eight schools",
    ),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="300 draws per chain (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figures")
    args = parser.parse_args(argv)
    try:
        import matplotlib
    except ImportError:
        print(f"meta_plots.py: error: {bm.plots.MATPLOTLIB_MISSING}", file=sys.stderr)
        return 1
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    size = 300 if args.quick else 1000
    print(f"{'data':<14} {'REML mu':>8} {'tau':>7} {'posterior mu':>13} {'tau':>7}")
    for name, data, tau_prior, xlabel, title in CASES:
        tasks = data()
        res = bm.estimators.random_effects(tasks, method="REML")
        model = bm.Hierarchical(
            likelihood=bm.likelihoods.NormalKnownNoise(),
            population=bm.populations.Normal(loc=dist.Normal(0.0, 5.0), scale=tau_prior),
        )
        post = bm.fit(
            model,
            tasks,
            seed=0,
            num_chains=2,
            num_warmup=size,
            num_samples=size,
            progress_bar=False,
        )
        print(
            f"{name:<14} {res.mu:8.3f} {res.tau:7.3f} {float(post.mean('mu')):13.3f} "
            f"{float(post.mean('tau')):7.3f}"
        )
        for kind, plot, extra in (
            ("forest", bm.plots.forest, {}),
            ("funnel", bm.plots.funnel, {"annotate": True}),
            ("shrinkage", bm.plots.shrinkage, {}),
        ):
            path = os.path.join(args.out, f"{name}_{kind}.png")
            fig = plot(res, post, xlabel=xlabel, title=f"{title}: {kind}", path=path, **extra)
            plt.close(fig)
            print(f"figure saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

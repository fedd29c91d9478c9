"""Domain generalisation: the average-risk optimum against the MAML optimum on held-out
domains, before and after a few adaptation steps.

A few training domains are seen; new domains from the same family are not. Two
initialisations are compared on the held-out domains, by the loss after 0, 1, 3 and 5
gradient steps (rate ``alpha``) on each held-out domain's own data:

* **average risk** (ERM, pooled training): the minimiser of the mean training-domain loss;
* **MAML**: the minimiser of the mean training-domain loss *after one inner step*.

Part 1 uses quadratic domains ``L_i(theta) = 1/2 (theta - theta_i*)^T A_i (theta - theta_i*)``
in 2-D (random rotations, curvatures log-uniform in [0.2, 8]), where both optima are closed
forms of ``bm.meta.quadratic`` (the MAML one weights each domain by
``(I - alpha A_i) A_i (I - alpha A_i)``, down-weighting domains where one step overshoots),
and the held-out loss after ``s`` steps is exact: ``1/2 e^T (M^s)^T A M^s e``. MAML trained
by ``bm.meta.maml`` on the same domains is checked against its closed form.

Part 2 uses a small network (1-32-32-1, tanh) on sinusoid domains
``y = a sin(w x + p)``: a handful of training domains with 100 points each, held-out domains
with K support and 100 query points; average risk by ``bm.meta.average_risk`` and MAML by
``bm.meta.maml`` (one inner step), the same Adam steps each. Errors are means over held-out
domains with 95% intervals (1.96 standard errors).

Run:  python examples/domain_generalisation.py [--quick] [--out DIR] [--json] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bayesmeta as bm

STEPS = (0, 1, 3, 5)
q = bm.meta.quadratic


# --------------------------------------------------------------------- quadratic domains
def quadratic_domains(rng, num, centre_spread=1.0):
    """``num`` random 2-D quadratic domains: Hessians ``R diag(l1, l2) R^T`` with
    eigenvalues log-uniform in [0.2, 8] and random rotations, optima ``N(0, spread^2 I)``
    shifted by one unit along the stiff direction of high-curvature domains (so curvature
    and optimum are related, and the two optima differ)."""
    eig = np.exp(rng.uniform(np.log(0.2), np.log(8.0), size=(num, 2)))
    angle = rng.uniform(0, np.pi, size=num)
    rot = np.stack(
        [
            np.stack([np.cos(angle), -np.sin(angle)], -1),
            np.stack([np.sin(angle), np.cos(angle)], -1),
        ],
        -2,
    )
    hessians = np.einsum("nij,nj,nkj->nik", rot, eig, rot)
    optima = centre_spread * rng.normal(size=(num, 2))
    optima = optima + (np.log(eig.max(axis=1)) > np.log(2.0))[:, None] * np.array([1.5, 0.0])
    return hessians, optima


def quadratic_curve(theta0, hessians, optima, alpha, steps):
    """Exact held-out losses after ``s`` gradient steps from ``theta0``: ``(num, len(steps))``."""
    e = theta0[None] - optima
    out = []
    for s in steps:
        m = q.inner_map(hessians, alpha, s) if s else np.broadcast_to(np.eye(2), hessians.shape)
        es = np.einsum("nij,nj->ni", m, e)
        out.append(0.5 * np.einsum("ni,nij,nj->n", es, hessians, es))
    return np.stack(out, axis=1)


# --------------------------------------------------------------------- network domains
def init_mlp(key, sizes=(1, 32, 32, 1)):
    params = []
    for k, (m, n) in zip(
        jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:], strict=True), strict=True
    ):
        params.append({"w": jax.random.normal(k, (m, n)) * jnp.sqrt(1.0 / m), "b": jnp.zeros(n)})
    return params


def mlp(params, x):
    h = x[:, None]
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return (h @ params[-1]["w"] + params[-1]["b"])[:, 0]


def mse_loss(params, batch):
    return jnp.mean((mlp(params, batch["x"]) - batch["y"]) ** 2)


def sinusoid_domains(key, num, num_points):
    ka, kw, kp, kx = jax.random.split(key, 4)
    amp = jax.random.uniform(ka, (num, 1), minval=0.5, maxval=2.0)
    freq = jax.random.uniform(kw, (num, 1), minval=0.7, maxval=1.3)
    phase = jax.random.uniform(kp, (num, 1), minval=0.0, maxval=jnp.pi)
    x = jax.random.uniform(kx, (num, num_points), minval=-5.0, maxval=5.0)
    return x, amp * jnp.sin(freq * x + phase)


def make_sampler(train_x, train_y, shots, query):
    """Every meta-batch holds all training domains, each with a fresh random split of its
    points into ``shots`` support and ``query`` query points."""
    num, pts = train_x.shape

    def sampler(key):
        idx = jax.vmap(lambda k: jax.random.permutation(k, pts))(jax.random.split(key, num))
        xs = jnp.take_along_axis(train_x, idx, axis=1)
        ys = jnp.take_along_axis(train_y, idx, axis=1)
        return {
            "support": {"x": xs[:, :shots], "y": ys[:, :shots]},
            "query": {"x": xs[:, shots : shots + query], "y": ys[:, shots : shots + query]},
        }

    return sampler


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-domains", type=int, default=8)
    parser.add_argument("--test-domains", type=int, default=500)
    parser.add_argument("--alpha", type=float, default=0.2, help="quadratic inner rate")
    parser.add_argument("--net-train-domains", type=int, default=10)
    parser.add_argument("--net-test-domains", type=int, default=300)
    parser.add_argument("--shots", type=int, default=10, help="K support points per domain")
    parser.add_argument("--net-alpha", type=float, default=0.01, help="network inner rate")
    parser.add_argument("--meta-iters", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figure")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    if args.quick:
        args.test_domains, args.net_test_domains, args.meta_iters = 50, 20, 30
    start = time.time()
    rng = np.random.default_rng(args.seed)
    alpha = args.alpha

    # ---- part 1: quadratic domains, closed forms
    hess_tr, opt_tr = quadratic_domains(rng, args.train_domains)
    hess_te, opt_te = quadratic_domains(rng, args.test_domains)
    inits = {
        "centre of gravity": q.center_of_gravity(opt_tr),
        "average risk": q.average_loss_optimum(hess_tr, opt_tr),
        "MAML (1 step)": q.maml_optimum(hess_tr, opt_tr, alpha, 1),
    }
    # MAML trained by gradient descent on the same domains reaches the closed form
    learner = bm.meta.maml(q.loss, optax.adam(0.05), inner_lr=alpha, num_inner_steps=1)
    batch = q.task_batch(hess_tr, opt_tr)
    trained, _ = bm.meta.train(
        learner, jnp.zeros(2), lambda key: batch, 300 if args.quick else 2000, progress_bar=False
    )
    maml_trained = np.asarray(trained.params)
    quad = {
        name: {
            "test": quadratic_curve(theta, hess_te, opt_te, alpha, STEPS),
            "train": quadratic_curve(theta, hess_tr, opt_tr, alpha, STEPS),
        }
        for name, theta in inits.items()
    }
    print(
        f"Part 1: quadratic domains in 2-D, {args.train_domains} training and "
        f"{args.test_domains} held-out domains, inner rate {alpha}"
    )
    print(
        f"MAML closed form {np.round(inits['MAML (1 step)'], 4).tolist()}, trained by "
        f"bm.meta.maml {np.round(maml_trained, 4).tolist()}; average risk "
        f"{np.round(inits['average risk'], 4).tolist()}"
    )
    header = f"{'init':<20}{'domains':<9}" + "".join(f"{f'{s} steps':>18}" for s in STEPS)
    print(header)
    for name, res in quad.items():
        for split in ("train", "test"):
            losses = res[split]
            cells = "".join(
                f"{m:>10.4f} +- {c:<5.3f}"
                for m, c in zip(
                    losses.mean(0),
                    1.96 * losses.std(0, ddof=1) / np.sqrt(losses.shape[0]),
                    strict=True,
                )
            )
            print(f"{name:<20}{split:<9}{cells}")
    diff = quad["MAML (1 step)"]["test"] - quad["average risk"]["test"]
    diff_ci = 1.96 * diff.std(0, ddof=1) / np.sqrt(diff.shape[0])
    print(
        "held-out MAML minus average risk (paired): "
        + ", ".join(
            f"{s} steps {d:+.4f} +- {c:.4f}"
            for s, d, c in zip(STEPS, diff.mean(0), diff_ci, strict=True)
        )
    )

    # ---- part 2: a small network on sinusoid domains
    key = jax.random.PRNGKey(args.seed)
    k_tr, k_te, k_init = jax.random.split(key, 3)
    # in --quick the set-up is compiled whole (a few compiles instead of one per eager op)
    init, domains = init_mlp, sinusoid_domains
    if args.quick:
        init, domains = jax.jit(init_mlp), jax.jit(sinusoid_domains, static_argnums=(1, 2))
    train_x, train_y = domains(k_tr, args.net_train_domains, 100)
    test_x, test_y = domains(k_te, args.net_test_domains, args.shots + 100)
    test_batch = {
        "support": {"x": test_x[:, : args.shots], "y": test_y[:, : args.shots]},
        "query": {"x": test_x[:, args.shots :], "y": test_y[:, args.shots :]},
    }
    sampler = make_sampler(train_x, train_y, args.shots, 100 - args.shots)
    params0 = init(k_init)
    learners = {
        "average risk": bm.meta.average_risk(mse_loss, optax.adam(1e-3), inner_lr=args.net_alpha),
        "MAML (1 step)": bm.meta.maml(
            mse_loss, optax.adam(1e-3), inner_lr=args.net_alpha, num_inner_steps=1
        ),
    }
    net = {}
    for i, (name, lrn) in enumerate(learners.items()):
        state, _ = bm.meta.train(
            lrn, params0, sampler, args.meta_iters, seed=args.seed + i, progress_bar=False
        )
        curve = bm.meta.diagnostics.inner_loop_curve(
            mse_loss, state, test_batch, inner_lr=args.net_alpha, max_steps=max(STEPS)
        )
        net[name] = curve
    elapsed = time.time() - start
    print(
        f"\nPart 2: 1-32-32-1 network, {args.net_train_domains} training sinusoid domains, "
        f"{args.net_test_domains} held-out domains, K = {args.shots}, inner rate "
        f"{args.net_alpha}, {args.meta_iters} Adam steps each ({elapsed:.0f} s in all)"
    )
    print(f"{'init':<20}" + "".join(f"{f'MSE {s} steps':>18}" for s in STEPS))
    for name, curve in net.items():
        cells = "".join(
            f"{curve.query_loss[s]:>10.3f} +- {1.96 * curve.query_loss_se[s]:<5.3f}" for s in STEPS
        )
        print(f"{name:<20}{cells}")
    net_diff = net["MAML (1 step)"].task_query_loss - net["average risk"].task_query_loss
    net_diff = net_diff[:, list(STEPS)]
    net_ci = 1.96 * net_diff.std(0, ddof=1) / np.sqrt(net_diff.shape[0])
    print(
        "held-out MAML minus average risk (paired): "
        + ", ".join(
            f"{s} steps {d:+.3f} +- {c:.3f}"
            for s, d, c in zip(STEPS, net_diff.mean(0), net_ci, strict=True)
        )
    )

    # ---- figure
    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.scatter(*opt_te.T, s=6, c="lightgrey", label="held-out optima")
    ax.scatter(*opt_tr.T, s=30, c="k", label="training optima")
    for (name, theta), marker in zip(inits.items(), ("o", "s", "*"), strict=True):
        ax.scatter(*theta, s=120, marker=marker, label=name, zorder=5)
    ax.set_title("quadratic domains: optima and initialisations")
    ax.legend(frameon=False, fontsize=7)
    ax = axes[1]
    for name, res in quad.items():
        losses = res["test"]
        se = losses.std(0, ddof=1) / np.sqrt(losses.shape[0])
        ax.errorbar(STEPS, losses.mean(0), yerr=1.96 * se, marker="o", capsize=3, label=name)
    ax.set_xlabel("adaptation steps on the held-out domain")
    ax.set_ylabel("held-out loss")
    ax.set_yscale("log")
    ax.set_title("quadratic domains (closed forms)")
    ax.legend(frameon=False)
    ax = axes[2]
    for name, curve in net.items():
        bm.meta.diagnostics.plot_inner_loop_curve(curve, ax=ax, label=name)
    ax.set_title(f"network on held-out sinusoid domains, K = {args.shots}")
    fig.tight_layout()
    path = os.path.join(args.out, "domain_generalisation.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")

    summary = {
        "quadratic": {
            name: {str(s): float(v) for s, v in zip(STEPS, res["test"].mean(0), strict=True)}
            for name, res in quad.items()
        },
        "quadratic_maml_minus_average": {
            str(s): float(v) for s, v in zip(STEPS, diff.mean(0), strict=True)
        },
        "quadratic_maml_minus_average_ci95": {
            str(s): float(v) for s, v in zip(STEPS, diff_ci, strict=True)
        },
        "quadratic_maml_trained_error": float(
            np.max(np.abs(maml_trained - inits["MAML (1 step)"]))
        ),
        "network": {
            name: {str(s): float(c.query_loss[s]) for s in STEPS} for name, c in net.items()
        },
        "network_ci95": {
            name: {str(s): float(1.96 * c.query_loss_se[s]) for s in STEPS}
            for name, c in net.items()
        },
        "network_maml_minus_average": {
            str(s): float(v) for s, v in zip(STEPS, net_diff.mean(0), strict=True)
        },
        "network_maml_minus_average_ci95": {
            str(s): float(v) for s, v in zip(STEPS, net_ci, strict=True)
        },
        "figures": [path],
        "seconds": round(elapsed, 1),
    }
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

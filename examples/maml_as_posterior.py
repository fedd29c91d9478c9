"""MAML read as Bayesian inference, scored against the exact posterior.

Bayesian linear regression tasks: ``theta_t = (intercept, slope) ~ N(MU, diag(TAU^2))``,
``y = theta_0 + theta_1 x + N(0, SIGMA^2)`` with ``x ~ U[-2, 2]``. Meta-training sees a
finite pool of tasks; each held-out task reveals ``K`` support points. For every held-out
task we compare the posterior of ``theta`` from

* ``implied prior (MAML)``: k gradient steps from MAML's initialisation are the posterior
  mean under the Gaussian prior they imply (``bm.meta.implied_prior``);
* ``implied prior (Meta-SGD)``: the same with learned per-parameter inner rates;
* ``LLAMA (iMAML)``: Laplace at the proximal inner loop's solution with iMAML's learned
  initialisation and prior precision ``lam`` (``bm.meta.llama``);
* ``ABML``: a meta-learned diagonal Gaussian prior, variational posterior by a few ELBO
  steps (``bm.meta.abml``);
* ``NUTS``: the full hierarchical model (``bm.fit``; population learned jointly);
* ``exact, EB``: the exact posterior under the population fitted by type-II maximum
  likelihood on all the data (``bm.exact.linear_gaussian``),

with the exact posterior under the true population (``bm.exact.linear_task_posterior``
with the true ``MU``, ``TAU``, ``SIGMA``) as the reference: KL(method || exact) of the Gaussian (the
moment-matched Gaussian for NUTS), the RMSE of the posterior mean, and the coverage of
central 50% and 90% posterior-predictive intervals for ``y`` at fresh query points.

Run: ``python examples/maml_as_posterior.py`` (about a minute), ``--quick --out DIR``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bayesmeta as bm
import bayesmeta.meta as meta
from bayesmeta.arviz import plot_forest
from bayesmeta.exact import (
    LinearHyper,
    linear_gaussian,
    linear_sufficient_stats,
    linear_task_posterior,
)

MU = np.array([1.0, -0.5])
TAU = np.array([0.8, 0.6])
SIGMA = 0.5
COEF = ["intercept", "x0"]


def simulate(rng, num_tasks, num_obs):
    theta = MU + TAU * rng.standard_normal((num_tasks, 2))
    x = rng.uniform(-2.0, 2.0, size=(num_tasks, num_obs))
    y = theta[:, :1] + theta[:, 1:] * x + SIGMA * rng.standard_normal((num_tasks, num_obs))
    return theta, x, y


def as_batch(x, y):
    """Meta-learner batch: design with an intercept column, known noise."""
    design = np.stack([np.ones_like(x), x], axis=-1)
    return {"x": jnp.asarray(design), "y": jnp.asarray(y), "noise_scale": jnp.full(y.shape, SIGMA)}


def as_taskset(x, y, prefix, with_noise):
    num_tasks, n = x.shape
    ids = np.repeat(np.arange(num_tasks), n)
    labels = [f"{prefix}{i}" for i in range(num_tasks)]
    if with_noise:  # slope covariate only; the likelihood adds the intercept
        return bm.TaskSet.from_arrays(
            y=y.ravel(),
            x=x.reshape(-1, 1),
            task=ids,
            labels=labels,
            noise_scale=np.full(y.size, SIGMA),
        )
    design = np.stack([np.ones(x.size), x.ravel()], axis=1)
    return bm.TaskSet.from_arrays(y=y.ravel(), x=design, task=ids, labels=labels)


def gaussian_kl(m_q, s_q, m_p, s_p):
    """KL(N(m_q, s_q) || N(m_p, s_p)) for batches of Gaussians."""
    d = m_q.shape[-1]
    inv_p = np.linalg.inv(s_p)
    diff = m_p - m_q
    return 0.5 * (
        np.einsum("tij,tji->t", inv_p, s_q)
        + np.einsum("ti,tij,tj->t", diff, inv_p, diff)
        - d
        + np.linalg.slogdet(s_p)[1]
        - np.linalg.slogdet(s_q)[1]
    )


def coverage(theta_draws, xq, yq, rng, levels=(0.5, 0.9)):
    """Coverage of central predictive intervals for y: draws (T, S, 2), xq/yq (T, n)."""
    f = theta_draws[:, :, None, 0] + theta_draws[:, :, None, 1] * xq[:, None, :]
    ypred = f + SIGMA * rng.standard_normal(f.shape)
    out = []
    for level in levels:
        lo, hi = np.quantile(ypred, [(1 - level) / 2, (1 + level) / 2], axis=1)
        out.append(float(np.mean((yq >= lo) & (yq <= hi))))
    return out


def test_task_posterior(post, num_train, num_test):
    """A Posterior restricted to the held-out tasks (the last ``num_test`` tasks)."""
    theta = post.samples["theta"][:, :, num_train : num_train + num_test]
    coords = dict(post.coords, task=list(post.coords["task"])[num_train : num_train + num_test])
    return bm.Posterior(
        {"theta": theta}, method=post.method, dims={"theta": ["task", "coef"]}, coords=coords
    )


def train_pool(learner, params, pool, num_steps, meta_batch, seed):
    num_pool = pool["support"]["y"].shape[0]

    def sampler(key):
        idx = jax.random.choice(key, num_pool, (meta_batch,), replace=False)
        return jax.tree.map(lambda a: a[idx], pool)

    return meta.train(learner, params, sampler, num_steps, seed=seed, progress_bar=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-tasks", type=int, default=200)
    parser.add_argument("--test-tasks", type=int, default=50)
    parser.add_argument("--shots", type=int, default=5, help="support points per task")
    parser.add_argument("--query", type=int, default=50, help="query points per test task")
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--meta-iters", type=int, default=3000)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument(
        "--prox-weight", type=float, default=1.0, help="iMAML's prior precision lam"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="maml_as_posterior_out")
    args = parser.parse_args(argv)
    num_chains = 2
    if args.quick:
        args.train_tasks, args.test_tasks, args.meta_iters, args.draws = 30, 10, 200, 300
        num_chains = 1
    start = time.time()
    rng = np.random.default_rng(args.seed)
    n_train_obs = 2 * args.shots
    _, x_tr, y_tr = simulate(rng, args.train_tasks, n_train_obs)
    theta_te, x_te, y_te = simulate(rng, args.test_tasks, args.shots + args.query)
    xs, ys = x_te[:, : args.shots], y_te[:, : args.shots]
    xq, yq = x_te[:, args.shots :], y_te[:, args.shots :]
    k, alpha = args.inner_steps, args.inner_lr
    nll = meta.linear_gaussian_nll
    pool = {
        "support": as_batch(x_tr[:, : args.shots], y_tr[:, : args.shots]),
        "query": as_batch(x_tr[:, args.shots :], y_tr[:, args.shots :]),
    }
    support = as_batch(xs, ys)
    labels = [f"test{i}" for i in range(args.test_tasks)]
    common = dict(num_draws=args.draws, seed=args.seed, labels=labels, param_dim=("coef", COEF))
    meta_batch = min(25, args.train_tasks)
    theta_init = jnp.zeros(2)
    posts = {}

    # reference: exact posterior of each held-out task under the true population
    test_set = as_taskset(xs, ys, "test", False)
    stats = linear_sufficient_stats(test_set.x, test_set.y, test_set.task_index, test_set.num_tasks)
    exact = linear_task_posterior(
        stats, LinearHyper(jnp.asarray(MU), jnp.diag(jnp.asarray(TAU)), jnp.asarray(SIGMA))
    )
    ref_mean, ref_cov = np.asarray(exact.mean), np.asarray(exact.cov)
    g_exact = meta.TaskGaussians.from_moments(ref_mean, ref_cov)
    posts["exact (true population)"] = meta.to_posterior(
        g_exact, theta_init, method="exact", info={"gaussians": g_exact}, **common
    )

    # exact under the empirical-Bayes population, fitted on all the data
    eb_tasks = bm.TaskSet.from_tasks(
        [(np.stack([np.ones_like(a), a], 1), b) for a, b in zip(x_tr, y_tr, strict=True)]
        + [(np.stack([np.ones_like(a), a], 1), b) for a, b in zip(xs, ys, strict=True)]
    )
    eb = linear_gaussian(eb_tasks, noise=SIGMA)
    g_eb = meta.TaskGaussians.from_moments(
        np.asarray(eb.task_mean)[args.train_tasks :], np.asarray(eb.task_cov)[args.train_tasks :]
    )
    posts["exact, EB population"] = meta.to_posterior(
        g_eb, theta_init, method="exact", info={"gaussians": g_eb}, **common
    )

    # MAML and Meta-SGD: the implied prior of k inner steps
    maml = meta.maml(nll, optax.adam(0.01), inner_lr=alpha, num_inner_steps=k)
    maml_state, _ = train_pool(maml, theta_init, pool, args.meta_iters, meta_batch, args.seed)
    posts[f"implied prior (MAML, k={k})"] = meta.implied_prior(
        nll, maml_state.params, support, inner_lr=alpha, num_inner_steps=k, **common
    )
    sgd = meta.meta_sgd(nll, optax.adam(0.01), inner_lr=alpha, num_inner_steps=k)
    sgd_state, _ = train_pool(sgd, theta_init, pool, args.meta_iters, meta_batch, args.seed)
    # learned rates can overshoot on high-curvature tasks: those get no implied prior
    posts[f"implied prior (Meta-SGD, k={k})"] = meta.implied_prior(
        nll,
        sgd_state.params.init,
        support,
        inner_lr=sgd_state.params.inner_lr,
        num_inner_steps=k,
        on_invalid="nan",
        **common,
    )

    # iMAML + LLAMA: prior N(theta0, I/lam), mode by the converged proximal inner loop
    lam = args.prox_weight
    imaml = meta.imaml(
        nll, optax.adam(0.01), inner_lr=alpha, num_inner_steps=200, prox_weight=lam, num_cg_iters=2
    )
    imaml_state, _ = train_pool(imaml, theta_init, pool, args.meta_iters, meta_batch, args.seed)
    posts[f"LLAMA (iMAML, lam={lam:g})"] = meta.llama(
        nll,
        imaml_state.params,
        support,
        inner_lr=alpha,
        num_inner_steps=500,
        prior_precision=lam,
        **common,
    )

    # ABML: meta-learned diagonal Gaussian prior
    abml = meta.abml(
        nll,
        optax.adam(0.01),
        inner_lr=alpha,
        num_inner_steps=k,
        num_mc_samples=4,
        init_scale=0.5,
        preconditioned=False,
    )
    abml_state, _ = train_pool(abml, theta_init, pool, args.meta_iters, meta_batch, args.seed)
    posts[f"ABML (k={k})"] = abml.posterior(
        abml_state,
        support,
        num_draws=args.draws,
        seed=args.seed,
        labels=labels,
        param_dim=("coef", COEF),
    )

    # NUTS on the hierarchical model, all tasks (held-out tasks: support points only)
    nuts_tasks = bm.TaskSet.from_tasks(
        [(a[:, None], b) for a, b in zip(x_tr, y_tr, strict=True)]
        + [(a[:, None], b) for a, b in zip(xs, ys, strict=True)],
        labels=[f"train{i}" for i in range(args.train_tasks)] + labels,
    ).with_noise_scale(SIGMA)
    model = bm.Hierarchical(
        likelihood=bm.likelihoods.LinearRegression(noise="known"),
        population=bm.populations.Normal(),
    )
    nuts = bm.fit(
        model,
        nuts_tasks,
        method="nuts",
        seed=args.seed,
        num_chains=num_chains,
        num_warmup=args.draws // num_chains,
        num_samples=args.draws // num_chains,
        progress_bar=False,
    )
    posts["NUTS (hierarchical)"] = test_task_posterior(nuts, args.train_tasks, args.test_tasks)
    elapsed = time.time() - start

    # scores against the exact posterior under the true population
    rows = []
    eval_rng = np.random.default_rng(args.seed + 1)
    for name, post in posts.items():
        draws = post.samples["theta"].reshape(-1, args.test_tasks, 2).transpose(1, 0, 2)
        g = post.info.get("gaussians")
        if g is not None:
            mean, cov = np.asarray(g.mean), g.cov()
        else:  # moment-matched Gaussian of the draws
            mean = draws.mean(axis=1)
            cov = np.einsum("tsi,tsj->tij", draws - mean[:, None], draws - mean[:, None]) / (
                draws.shape[1] - 1
            )
        ok = np.all(np.isfinite(mean), axis=1)  # tasks that have a posterior at all
        kl = gaussian_kl(mean[ok], cov[ok], ref_mean[ok], ref_cov[ok])
        rmse = float(np.sqrt(np.mean((mean[ok] - ref_mean[ok]) ** 2)))
        cov50, cov90 = coverage(draws[ok], xq[ok], yq[ok], eval_rng)
        rows.append((name, float(np.mean(kl)), rmse, cov50, cov90, int(np.sum(~ok))))
    print(
        f"MAML as a posterior: {args.train_tasks} meta-training tasks, {args.test_tasks} "
        f"held-out tasks with {args.shots} support and {args.query} query points "
        f"({elapsed:.0f} s)"
    )
    print(
        f"{'method':<32}{'KL(q||exact)':>13}{'mean RMSE':>11}{'cover 50%':>11}{'cover 90%':>11}"
        f"{'no posterior':>14}"
    )
    for name, kl, rmse, c50, c90, missing in rows:
        print(f"{name:<32}{kl:>13.4f}{rmse:>11.4f}{c50:>11.3f}{c90:>11.3f}{missing:>14d}")
    print(
        "(scores over the held-out tasks that have a posterior; 'no posterior': tasks where "
        "the learned inner steps imply no Gaussian prior)"
    )
    truth_cover = coverage(np.repeat(theta_te[:, None, :], args.draws, axis=1), xq, yq, eval_rng)
    print(
        f"(true theta with noise only: cover {truth_cover[0]:.3f} / {truth_cover[1]:.3f}; "
        f"Monte Carlo SE of a coverage near 0.9: "
        f"{np.sqrt(0.09 / (args.test_tasks * args.query)):.3f} if query points were "
        "independent)"
    )

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(4, args.test_tasks)
    subset = {}
    for name, post in posts.items():
        theta = post.samples["theta"][:, :, :shown]
        subset[name] = bm.Posterior(
            {"theta": theta},
            method=post.method,
            dims={"theta": ["task", "coef"]},
            coords={"task": labels[:shown], "coef": COEF},
        ).to_arviz()
    fig = plot_forest(subset, var_names=["theta"], ci_prob=0.9)
    path = os.path.join(args.out, "maml_as_posterior_forest.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r[0] for r in rows]
    pos = np.arange(len(rows))
    ax.barh(pos - 0.2, [r[3] for r in rows], height=0.4, label="50% intervals")
    ax.barh(pos + 0.2, [r[4] for r in rows], height=0.4, label="90% intervals")
    for level in (0.5, 0.9):
        ax.axvline(level, color="k", ls=":", lw=1)
    ax.set_yticks(pos, names, fontsize=8)
    ax.set_xlabel("coverage of predictive intervals")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    path2 = os.path.join(args.out, "maml_as_posterior_coverage.png")
    fig.savefig(path2, dpi=100)
    plt.close(fig)
    print(f"saved {path} and {path2}")
    return rows


if __name__ == "__main__":
    main()

"""Hypergradients and implicit differentiation: an inner learning rate, a ridge penalty and
detection anchor shapes, each learned by gradient descent on a bi-level objective and each
gradient checked against an independent computation.

(a) **Inner learning rate.** On a family of quadratic tasks ``1/2 (w - w_i*)' A_i (w - w_i*)``
    the one-step post-adaptation loss from ``w = 0`` is a quadratic in the rate ``alpha``;
    ``bm.meta.learn_inner_lr`` descends its hypergradient (through the inner update) and is
    compared with the closed-form minimiser ``bm.meta.quadratic.best_inner_lr``.
(b) **Ridge penalty.** Ridge regression ``G(w, h) = 1/2 mean((Xw - y)^2) + e^h/2 ||w||^2`` on
    a small training set, validation loss ``F(w) = 1/2 mean((X_v w - y_v)^2)``. The
    hypergradient ``dF/dh`` by the implicit function theorem
    (``bm.meta.implicit_hypergradient``) is checked against central finite differences of
    the closed-form solution and against differentiation through 2000 unrolled gradient
    steps (``bm.meta.unrolled_hypergradient``); ``h = log(lambda)`` learned with it is
    checked against a grid search.
(c) **Anchor boxes** (in the spirit of YOLOv2's anchors). Outer parameters: ``A`` prototype
    box shapes ``(w_a, h_a)`` (their logs). Inner problem: for every anchor a ridge
    regression from noisy box features to the offsets ``log(w / w_a), log(h / h_a)``,
    weighted by a soft IoU assignment of boxes to anchors, solved exactly. Outer objective:
    the assignment-weighted ``1 - IoU`` of the regressed boxes on validation boxes. Its
    gradient by the implicit function theorem is checked against finite differences and
    unrolled differentiation; the anchors learned with it are compared with IoU k-means
    anchors (distance ``1 - IoU``, as in YOLOv2) on held-out boxes.

All computations run in float64. Relative errors are ``|g - g_ref| / |g_ref|`` (Euclidean
norms); the stated tolerances are what float64 finite differences (step 1e-5, error of
order 1e-9 relative) and a converged inner loop allow.

Run: ``python examples/hyperparameters.py`` (about a minute on a laptop CPU);
``--quick --out DIR`` for a tiny version; ``--json`` prints a JSON summary as the last line.
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

# stated tolerances on relative errors
TOL_FD = 1e-5  # implicit vs central finite differences (float64, step 1e-5)
TOL_UNROLLED = 1e-6  # implicit vs a converged unrolled inner loop
TOL_LR = 1e-3  # learned inner rate vs the closed form
TOL_GRID = 0.01  # learned log(lambda) vs the grid minimiser (final spacing 0.005)


def rel_err(a, b):
    a, b = np.ravel(np.asarray(a, float)), np.ravel(np.asarray(b, float))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def central_difference(fn, h, step=1e-5):
    """Central finite differences of a scalar function of a flat float64 array."""
    h = np.asarray(h, float)
    flat = h.ravel()
    out = np.empty_like(flat)
    for i in range(flat.size):
        e = np.zeros_like(flat)
        e[i] = step
        up, down = fn((flat + e).reshape(h.shape)), fn((flat - e).reshape(h.shape))
        out[i] = (float(up) - float(down)) / (2 * step)
    return out.reshape(h.shape)


# ------------------------------------------------------------------ (a) inner learning rate


def quadratic_family(rng, num_tasks, dim):
    hessians = []
    for _ in range(num_tasks):
        basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        hessians.append(basis @ np.diag(rng.uniform(0.5, 4.0, size=dim)) @ basis.T)
    optima = 1.0 + rng.normal(size=(num_tasks, dim))
    return np.stack(hessians), optima


def learn_rate_part(rng, num_tasks, dim, num_steps):
    q = bm.meta.quadratic
    hessians, optima = quadratic_family(rng, num_tasks, dim)
    batch = q.task_batch(hessians, optima)
    params = jnp.zeros(dim)
    best = q.best_inner_lr(hessians, optima, np.zeros(dim))
    lr, history = bm.meta.learn_inner_lr(
        q.loss,
        params,
        batch,
        init_lr=0.05,
        num_inner_steps=1,
        optimizer=optax.adam(optax.exponential_decay(0.02, num_steps // 4, 0.3)),
        num_steps=num_steps,
    )
    rates = np.linspace(0.0, 2 * best, 101)
    curve = [q.meta_loss(np.zeros(dim), hessians, optima, r, 1) for r in rates]
    return {
        "learned": float(lr),
        "best": best,
        "rel_err": abs(float(lr) - best) / best,
        "rates": rates,
        "curve": np.asarray(curve),
        "loss_learned": q.meta_loss(np.zeros(dim), hessians, optima, float(lr), 1),
        "loss_best": q.meta_loss(np.zeros(dim), hessians, optima, best, 1),
    }


# ------------------------------------------------------------------ (b) ridge penalty


def ridge_problem(rng, num_train=30, num_val=200, dim=20, noise=1.0):
    """A regression problem where the training set is too small for least squares."""
    w_true = rng.normal(size=dim) * 0.5
    x, xv = rng.normal(size=(num_train, dim)), rng.normal(size=(num_val, dim))
    y = x @ w_true + noise * rng.normal(size=num_train)
    yv = xv @ w_true + noise * rng.normal(size=num_val)
    data = tuple(jnp.asarray(a) for a in (x, y, xv, yv))

    def inner(w, h):
        return 0.5 * jnp.mean((data[0] @ w - data[1]) ** 2) + 0.5 * jnp.exp(h) * jnp.sum(w**2)

    def outer(w, h):
        return 0.5 * jnp.mean((data[2] @ w - data[3]) ** 2)

    def solve(h):
        n = data[0].shape[0]
        gram = data[0].T @ data[0] / n + jnp.exp(h) * jnp.eye(dim)
        return jnp.linalg.solve(gram, data[0].T @ data[1] / n)

    # step 1 / L for the unrolled loop (L = largest eigenvalue of the inner Hessian at h)
    top = float(np.linalg.eigvalsh(x.T @ x / num_train)[-1])
    return inner, outer, solve, top


def hyper_step(inner, outer, solve, num_cg_iters, optimizer):
    """One compiled function ``step(h, opt_state) -> (F(h), dF/dh, h', opt_state')``: the
    outer objective at the exact inner solution, its implicit hypergradient, and an
    optimizer step. The checks (finite differences, grid search) reuse it: one compile."""

    @jax.jit
    def step(h, opt_state):
        w = solve(h)
        value = outer(w, h)
        grad = bm.meta.implicit_hypergradient(inner, outer, w, h, num_cg_iters=num_cg_iters)
        updates, opt_state = optimizer.update(grad, opt_state, h)
        return value, grad, optax.apply_updates(h, updates), opt_state

    return step


def adam_decay(learning_rate, num_steps):
    """Adam whose step decays 0.3x every quarter of the run."""
    return optax.adam(optax.exponential_decay(learning_rate, max(num_steps // 4, 1), 0.3))


def check_hypergradient(step, optimizer, unrolled_fn, h):
    """The implicit hypergradient at ``h`` against central finite differences of the outer
    objective at the exact inner solution, and against unrolled differentiation."""
    h = jnp.asarray(h)
    state = optimizer.init(h)
    _, implicit, _, _ = step(h, state)
    fd = central_difference(lambda v: step(jnp.asarray(v), state)[0], np.asarray(h))
    unrolled, w_t = unrolled_fn(h)
    return {
        "implicit": np.asarray(implicit),
        "fd": fd,
        "unrolled": np.asarray(unrolled),
        "fd_rel_err": rel_err(implicit, fd),
        "unrolled_rel_err": rel_err(implicit, unrolled),
    }


def descend(step, optimizer, h0, num_steps):
    """``num_steps`` optimizer steps on ``h`` with the implicit hypergradient; returns
    ``(h, objective values)``."""
    h = jnp.asarray(h0)
    state = optimizer.init(h)
    values = []
    for _ in range(num_steps):
        value, _, h, state = step(h, state)
        values.append(float(value))
    return h, np.asarray(values)


def ridge_part(problem, h_check, num_steps, num_unrolled):
    inner, outer, solve, top = problem
    dim = solve(jnp.asarray(0.0)).shape[0]
    opt = adam_decay(0.2, num_steps)
    step = hyper_step(inner, outer, solve, 2 * dim, opt)
    unrolled_fn = jax.jit(
        lambda h: bm.meta.unrolled_hypergradient(
            inner,
            outer,
            jnp.zeros(dim),
            h,
            num_steps=num_unrolled,
            step_size=1.0 / (top + float(np.exp(h_check))),
        )
    )
    check = check_hypergradient(step, opt, unrolled_fn, h_check)
    h, trace = descend(step, opt, 0.0, num_steps)
    # grid search: spacing 0.1 on [-6, 4], then 0.005 around its minimum
    state = opt.init(jnp.asarray(0.0))

    def scan(grid):
        return grid, np.array([float(step(jnp.asarray(v), state)[0]) for v in grid])

    coarse, coarse_values = scan(np.linspace(-6.0, 4.0, 101))
    centre = coarse[np.argmin(coarse_values)]
    fine, fine_values = scan(np.linspace(centre - 0.1, centre + 0.1, 41))
    grid = np.concatenate([coarse, fine])
    values = np.concatenate([coarse_values, fine_values])
    order = np.argsort(grid)
    grid, values = grid[order], values[order]
    fit = {
        "learned": float(h),
        "grid": float(grid[np.argmin(values)]),
        "val_learned": float(outer(solve(h), h)),
        "val_grid": float(values.min()),
        "grid_values": values,
        "grid_h": grid,
        "trace": trace,
    }
    return check, fit


# ------------------------------------------------------------------ (c) anchor boxes


def synthetic_boxes(rng, num, feature_noise=0.35):
    """Box shapes (w, h) from four clusters in log space (tall, wide, small, large), and
    noisy features ``[1, log w + e, log h + e]`` from which the offsets are regressed."""
    centres = np.log([[0.12, 0.35], [0.40, 0.15], [0.08, 0.08], [0.45, 0.50]])
    weights = np.array([0.3, 0.3, 0.25, 0.15])
    k = rng.choice(len(centres), size=num, p=weights)
    logs = centres[k] + 0.2 * rng.normal(size=(num, 2))
    feats = np.column_stack([np.ones(num), logs + feature_noise * rng.normal(size=(num, 2))])
    return np.exp(logs), feats


def iou_wh(a, b):
    """IoU of boxes with the same centre, from shapes ``(..., 2)`` broadcasting."""
    inter = jnp.minimum(a[..., 0], b[..., 0]) * jnp.minimum(a[..., 1], b[..., 1])
    return inter / (a[..., 0] * a[..., 1] + b[..., 0] * b[..., 1] - inter)


def iou_kmeans(boxes, k, rng, iters=100, restarts=5):
    """YOLOv2 anchors: k-means on box shapes with distance ``1 - IoU`` (centres = means)."""
    best, best_iou = None, -1.0
    for _ in range(restarts):
        cent = boxes[rng.choice(len(boxes), size=k, replace=False)]
        for _ in range(iters):
            iou = np.asarray(iou_wh(boxes[:, None], cent[None]))
            assign = iou.argmax(axis=1)
            new = np.stack(
                [
                    boxes[assign == j].mean(axis=0) if np.any(assign == j) else cent[j]
                    for j in range(k)
                ]
            )
            if np.allclose(new, cent):
                break
            cent = new
        score = float(np.asarray(iou_wh(boxes[:, None], cent[None])).max(axis=1).mean())
        if score > best_iou:
            best, best_iou = cent, score
    return best


def anchor_problem(train, val, ridge=1.0, temperature=0.05):
    """Inner and outer losses of the anchor design problem, in ``log`` anchor shapes ``h``
    ``(A, 2)`` and per-anchor regression weights ``W`` ``(A, 3, 2)``."""
    boxes, feats = (jnp.asarray(a) for a in train)
    vboxes, vfeats = (jnp.asarray(a) for a in val)

    def resp(h, bx):
        # soft assignment of each box to the anchors by IoU (the hard argmax as T -> 0)
        return jax.nn.softmax(iou_wh(bx[:, None], jnp.exp(h)[None]) / temperature, axis=1)

    def inner(w, h):
        r = resp(h, boxes)  # (N, A)
        pred = h[None] + jnp.einsum("nf,afk->nak", feats, w)  # log shapes (N, A, 2)
        err = jnp.sum((jnp.log(boxes)[:, None] - pred) ** 2, axis=-1)
        return jnp.mean(jnp.sum(r * err, axis=1)) + ridge * jnp.sum(w**2)

    def predict(w, h, f):
        return jnp.exp(h[None] + jnp.einsum("nf,afk->nak", f, w))  # (N, A, 2)

    def outer(w, h):
        r = resp(h, vboxes)
        iou = iou_wh(predict(w, h, vfeats), vboxes[:, None])
        return jnp.mean(jnp.sum(r * (1 - iou), axis=1))

    def solve(h):
        r = resp(h, boxes)
        n = boxes.shape[0]
        target = jnp.log(boxes)[:, None] - h[None]  # (N, A, 2)
        gram = jnp.einsum("na,nf,ng->afg", r, feats, feats) / n + ridge * jnp.eye(3)
        rhs = jnp.einsum("na,nf,nak->afk", r, feats, target) / n
        return jnp.linalg.solve(gram, rhs)

    @jax.jit
    def _scores(h, bx, f):
        w = solve(h)
        anchor_iou = iou_wh(bx[:, None], jnp.exp(h)[None])
        best = jnp.argmax(anchor_iou, axis=1)
        pred = predict(w, h, f)[jnp.arange(bx.shape[0]), best]
        r = resp(h, bx)
        soft = jnp.mean(jnp.sum(r * (1 - iou_wh(predict(w, h, f), bx[:, None])), axis=1))
        return jnp.mean(anchor_iou.max(axis=1)), jnp.mean(iou_wh(pred, bx)), soft

    def scores(h, bx, f):
        """On boxes ``bx`` with features ``f``: the mean IoU of the best anchor alone, the
        mean IoU of the regressed box of the best-matching anchor, and the outer objective
        (assignment-weighted ``1 - IoU`` of the regressed boxes)."""
        return tuple(float(v) for v in _scores(h, jnp.asarray(bx), jnp.asarray(f)))

    # step size for unrolled descent on the inner problem (Hessian bound 2 (max eig + ridge))
    top = 2 * (float(np.linalg.eigvalsh(np.asarray(feats.T @ feats) / feats.shape[0])[-1]) + ridge)
    return inner, outer, solve, scores, top


def anchor_part(problem, h0, num_steps, num_unrolled):
    inner, outer, solve, _, top = problem
    h0 = jnp.asarray(h0)
    opt = adam_decay(0.03, num_steps)
    step = hyper_step(inner, outer, solve, 3 * h0.shape[0] * 6, opt)
    unrolled_fn = jax.jit(
        lambda h: bm.meta.unrolled_hypergradient(
            inner,
            outer,
            jnp.zeros((h0.shape[0], 3, 2)),
            h,
            num_steps=num_unrolled,
            step_size=1.0 / top,
        )
    )
    check = check_hypergradient(step, opt, unrolled_fn, h0)
    h, trace = descend(step, opt, h0, num_steps)
    return check, h, trace, step, opt


# ------------------------------------------------------------------ driver


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, default=5, help="number of anchor shapes")
    parser.add_argument("--boxes", type=int, default=2000, help="training boxes")
    parser.add_argument("--lr-steps", type=int, default=600, help="steps learning the rate")
    parser.add_argument("--ridge-steps", type=int, default=200, help="steps learning lambda")
    parser.add_argument("--anchor-steps", type=int, default=300, help="steps learning anchors")
    parser.add_argument("--unrolled", type=int, default=2000, help="unrolled inner steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", default=".", help="directory for the figure")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args(argv)
    if args.quick:
        args.boxes, args.lr_steps, args.ridge_steps, args.anchor_steps = 200, 300, 150, 20
        args.anchors, args.unrolled = 3, 300
    start = time.time()
    rng = np.random.default_rng(args.seed)
    with jax.enable_x64(True):
        rate = learn_rate_part(rng, 20, 4, args.lr_steps)
        ridge = ridge_problem(rng)
        ridge_check, ridge_fit = ridge_part(ridge, np.log(0.3), args.ridge_steps, args.unrolled)
        train = synthetic_boxes(rng, args.boxes)
        val = synthetic_boxes(rng, args.boxes)
        test = synthetic_boxes(rng, 5000)
        kmeans = iou_kmeans(train[0], args.anchors, rng)
        problem = anchor_problem(train, val)
        h_kmeans = jnp.log(jnp.asarray(kmeans))
        anchor_check, h_learned, anchor_trace, anchor_step, anchor_opt = anchor_part(
            problem, h_kmeans, args.anchor_steps, args.unrolled
        )
        scores = problem[3]
        rows_anchor = {}
        for name, h in (("k-means (IoU)", h_kmeans), ("learned (implicit)", h_learned)):
            outer_val = float(anchor_step(h, anchor_opt.init(h))[0])
            anchor_iou, reg_iou, outer_test = scores(h, *test)
            rows_anchor[name] = {
                "outer_val": outer_val,
                "outer_test": outer_test,
                "anchor_iou": anchor_iou,
                "regressed_iou": reg_iou,
                "anchors": np.exp(np.asarray(h)).round(3).tolist(),
            }
    elapsed = time.time() - start

    checks = [
        ("(a) learned inner rate vs closed form", rate["learned"], rate["best"],
         rate["rel_err"], TOL_LR),
        ("(b) implicit vs finite differences", float(ridge_check["implicit"]),
         float(ridge_check["fd"]), ridge_check["fd_rel_err"], TOL_FD),
        (f"(b) implicit vs unrolled ({args.unrolled} steps)", float(ridge_check["implicit"]),
         float(ridge_check["unrolled"]), ridge_check["unrolled_rel_err"], TOL_UNROLLED),
        ("(b) learned log(lambda) vs grid search", ridge_fit["learned"], ridge_fit["grid"],
         abs(ridge_fit["learned"] - ridge_fit["grid"]), TOL_GRID),
        ("(c) implicit vs finite differences", float(np.linalg.norm(anchor_check["implicit"])),
         float(np.linalg.norm(anchor_check["fd"])), anchor_check["fd_rel_err"], TOL_FD),
        (f"(c) implicit vs unrolled ({args.unrolled} steps)",
         float(np.linalg.norm(anchor_check["implicit"])),
         float(np.linalg.norm(anchor_check["unrolled"])), anchor_check["unrolled_rel_err"],
         TOL_UNROLLED),
    ]  # fmt: skip
    print(f"Hypergradient checks (float64, {elapsed:.0f} s); (c) values are gradient norms")
    print(f"{'check':<42}{'value':>13}{'reference':>13}{'error':>11}{'tolerance':>11}  ok")
    for name, value, ref, err, tol in checks:
        print(f"{name:<42}{value:>13.6g}{ref:>13.6g}{err:>11.2e}{tol:>11.0e}  {err <= tol}")
    print("(b) error of log(lambda) is absolute; the others are relative")
    print(
        f"(b) validation loss: learned lambda {np.exp(ridge_fit['learned']):.4f} -> "
        f"{ridge_fit['val_learned']:.5f}; grid lambda {np.exp(ridge_fit['grid']):.4f} -> "
        f"{ridge_fit['val_grid']:.5f}"
    )
    print(f"\nAnchor shapes ({args.anchors} anchors, {args.boxes} training boxes, 5000 test boxes)")
    print(
        f"{'anchors':<20}{'outer (val)':>12}{'outer (test)':>13}{'IoU anchor':>12}"
        f"{'IoU regressed':>15}"
    )
    for name, row in rows_anchor.items():
        print(
            f"{name:<20}{row['outer_val']:>12.4f}{row['outer_test']:>13.4f}"
            f"{row['anchor_iou']:>12.4f}{row['regressed_iou']:>15.4f}"
        )
    for name, row in rows_anchor.items():
        print(f"{name}: (w, h) = " + ", ".join(f"({w:.3f}, {h:.3f})" for w, h in row["anchors"]))

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(rate["rates"], rate["curve"], "k")
    ax.axvline(rate["best"], color="C0", label=f"closed form {rate['best']:.4f}")
    ax.axvline(rate["learned"], color="C1", ls="--", label=f"learned {rate['learned']:.4f}")
    ax.set_xlabel("inner learning rate")
    ax.set_ylabel("post-adaptation loss")
    ax.set_title("(a) inner rate on quadratic tasks")
    ax.legend(frameon=False)
    ax = axes[1]
    ax.plot(ridge_fit["grid_h"], ridge_fit["grid_values"], "k")
    ax.axvline(ridge_fit["grid"], color="C0", label="grid minimum")
    ax.axvline(ridge_fit["learned"], color="C1", ls="--", label="learned (implicit)")
    ax.set_xlabel("log ridge penalty")
    ax.set_ylabel("validation loss")
    ax.set_title("(b) ridge penalty")
    ax.legend(frameon=False)
    ax = axes[2]
    boxes = test[0][:1500]
    ax.scatter(boxes[:, 0], boxes[:, 1], s=3, c="grey", alpha=0.4, label="boxes")
    for (name, row), marker in zip(rows_anchor.items(), ("s", "*"), strict=True):
        a = np.asarray(row["anchors"])
        ax.scatter(a[:, 0], a[:, 1], s=90, marker=marker, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("width")
    ax.set_ylabel("height")
    ax.set_title("(c) anchor shapes")
    ax.legend(frameon=False)
    fig.tight_layout()
    path = os.path.join(args.out, "hyperparameters.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")

    summary = {
        "lr_learned": rate["learned"],
        "lr_closed_form": rate["best"],
        "lr_rel_err": rate["rel_err"],
        "ridge_fd_rel_err": ridge_check["fd_rel_err"],
        "ridge_unrolled_rel_err": ridge_check["unrolled_rel_err"],
        "log_lambda_learned": ridge_fit["learned"],
        "log_lambda_grid": ridge_fit["grid"],
        "anchor_fd_rel_err": anchor_check["fd_rel_err"],
        "anchor_unrolled_rel_err": anchor_check["unrolled_rel_err"],
        "anchors": {
            name: {k: v for k, v in row.items() if k != "anchors"}
            for name, row in rows_anchor.items()
        },
        "all_within_tolerance": all(err <= tol for *_, err, tol in checks),
        "seconds": round(elapsed, 1),
    }
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

"""Closed-form Gaussian answers: the yardstick for every approximate method.

- :mod:`bayesmeta.exact.normal`: the normal-normal model (known noise), exact posterior by
  one-dimensional adaptive quadrature over ``tau`` with ``mu`` and ``theta`` integrated
  analytically (:func:`normal_normal`, :func:`solve_normal_normal`), plus the differentiable
  marginal likelihoods used by collapsed inference.
- :mod:`bayesmeta.exact.linear`: Bayesian linear regression tasks with a Gaussian population
  (:func:`linear_gaussian`): exact per-task posteriors, the exact marginal likelihood and
  type-II maximum likelihood of the population.
"""

from bayesmeta.exact.linear import (
    GaussianPosterior,
    LinearGaussianResult,
    LinearHyper,
    LinearStats,
    NIGPosterior,
    StudentTPredictive,
    fit_linear_gaussian,
    linear_gaussian,
    linear_log_marginal,
    linear_log_marginal_t,
    linear_new_task,
    linear_predictive,
    linear_quad_rows,
    linear_residual_stats,
    linear_sufficient_stats,
    linear_task_posterior,
    linear_task_posterior_t,
)
from bayesmeta.exact.normal import (
    NormalMixture,
    NormalNormalResult,
    log_marginal_normal_normal,
    log_marginal_tau,
    mu_conditional,
    solve_normal_normal,
    theta_conditional,
)

# normal_normal, fit_exact, why_not_exact and EXACT_OPTIONS return or describe a Posterior,
# so they live with the engine (bayesmeta.inference.exact); the top-level package sets
# them here as bm.exact.* after importing both, and this package imports no layer above it
__all__ = [
    "EXACT_OPTIONS",
    "NormalMixture",
    "NormalNormalResult",
    "fit_exact",
    "log_marginal_normal_normal",
    "log_marginal_tau",
    "mu_conditional",
    "normal_normal",
    "solve_normal_normal",
    "theta_conditional",
    "why_not_exact",
    "GaussianPosterior",
    "LinearGaussianResult",
    "LinearHyper",
    "LinearStats",
    "fit_linear_gaussian",
    "linear_gaussian",
    "linear_log_marginal",
    "linear_log_marginal_t",
    "linear_new_task",
    "linear_predictive",
    "linear_residual_stats",
    "linear_sufficient_stats",
    "linear_task_posterior",
    "linear_task_posterior_t",
    "linear_quad_rows",
    "NIGPosterior",
    "StudentTPredictive",
]

"""Meta-learning: MAML and relatives, their quadratic closed forms, hypergradients,
MAML read as a posterior, and diagnostics.

>>> import bayesmeta as bm
>>> learner = bm.meta.maml(loss_fn, optimizer, inner_lr=0.01, num_inner_steps=1)  # doctest: +SKIP
>>> state, history = bm.meta.train(learner, params, task_sampler, 1000)           # doctest: +SKIP
"""

from bayesmeta.meta import diagnostics, hypergrad, quadratic
from bayesmeta.meta.abml import ABML, ABMLInfo, GaussianPrior, abml
from bayesmeta.meta.average_risk import average_risk
from bayesmeta.meta.hypergrad import (
    implicit_hypergradient,
    inner_lr_hypergradient,
    inner_lr_learner,
    learn_inner_lr,
    post_adaptation_loss,
    unrolled_hypergradient,
)
from bayesmeta.meta.l2o import L2O, L2OConfig, L2OInfo, L2OState, build_l2o_loss, l2o
from bayesmeta.meta.last_layer import (
    BayesianLastLayer,
    LastLayerParams,
    bayesian_last_layer,
    build_last_layer_loss,
    calibrate_last_layer,
    last_layer_hyper,
)
from bayesmeta.meta.learners import (
    MetaInfo,
    MetaLearner,
    MetaSGDParams,
    MetaState,
    build_imaml_step,
    build_maml_loss,
    build_maml_step,
    build_meta_sgd_step,
    build_reptile_step,
    imaml,
    maml,
    meta_sgd,
    reptile,
)
from bayesmeta.meta.posterior import (
    TaskGaussians,
    implied_posterior_cov,
    implied_prior,
    implied_prior_cov,
    linear_gaussian_nll,
    llama,
    llama_gaussians,
    to_posterior,
)
from bayesmeta.meta.recalibration import Recalibration, recalibrate
from bayesmeta.meta.representations import linear_cka, relative_change
from bayesmeta.meta.train import train

__all__ = [
    "MetaLearner",
    "MetaState",
    "MetaInfo",
    "MetaSGDParams",
    "maml",
    "reptile",
    "imaml",
    "meta_sgd",
    "build_maml_loss",
    "build_maml_step",
    "build_reptile_step",
    "build_imaml_step",
    "build_meta_sgd_step",
    "train",
    "quadratic",
    "hypergrad",
    "diagnostics",
    "post_adaptation_loss",
    "inner_lr_hypergradient",
    "inner_lr_learner",
    "learn_inner_lr",
    "implicit_hypergradient",
    "unrolled_hypergradient",
    "TaskGaussians",
    "implied_prior",
    "implied_prior_cov",
    "implied_posterior_cov",
    "llama",
    "llama_gaussians",
    "to_posterior",
    "linear_gaussian_nll",
    "ABML",
    "ABMLInfo",
    "GaussianPrior",
    "abml",
    "linear_cka",
    "relative_change",
    "average_risk",
    "L2O",
    "L2OConfig",
    "L2OState",
    "L2OInfo",
    "l2o",
    "build_l2o_loss",
    "BayesianLastLayer",
    "LastLayerParams",
    "bayesian_last_layer",
    "build_last_layer_loss",
    "calibrate_last_layer",
    "Recalibration",
    "recalibrate",
    "last_layer_hyper",
]

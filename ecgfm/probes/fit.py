"""Fitting a probe: one scikit-learn ``LogisticRegression`` per target on standardised embeddings.

For each target (a 0/1 column; several targets make a multi-label probe, one independent regression each):

1. **The probe.** ``GridSearchCV`` over :data:`C_GRID` of a ``Pipeline(StandardScaler, LogisticRegression)``
   (``class_weight="balanced"``: a rare target weighs as much as a common one), scored by AUROC with a stratified,
   seeded k-fold split of the records given; the standardisation is fit inside each fold. The chosen C is then
   refit on all the records: that pipeline's scaler and coefficients are the probe.
2. **Its estimate.** The same selection nested in an outer stratified k-fold: each outer fold's records are
   scored by a pipeline whose C and standardisation never saw them; the AUROC of these out-of-fold probabilities
   (``sklearn.metrics.roc_auc_score``) and its 95 % interval from a seeded bootstrap over records are stored in
   the probe's summary. It estimates how the probe does on records like these, not on another site's.

A target needs at least :data:`MIN_PER_CLASS` positive and negative records (k-fold inside k-fold). The fits run
on one thread (``threadpoolctl``, scikit-learn's own dependency): these regressions are small, and OpenMP and BLAS
threads competing for busy cores made them several times slower.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ecgfm.probes.probe import Probe

C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))  # inverse regularisation strengths tried (per decade)
MAX_ITER = 5000
TOL = 1e-8  # tight, so that an independent LogisticRegression with the chosen C lands on the same optimum
MIN_PER_CLASS = 3
DEFAULT_FOLDS = 5
DEFAULT_BOOTSTRAP = 1000
SOLVER = "lbfgs"


class ProbeFitError(ValueError):
    """Records and labels a probe cannot be fit on; the message says why."""


def logistic_regression(c: float) -> Any:
    """The probe's model for one target with inverse regularisation ``c`` (also what the tests refit)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", solver=SOLVER, max_iter=MAX_ITER, tol=TOL)


def _select(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> Any:
    """``GridSearchCV`` of the standardise-then-regress pipeline over :data:`C_GRID`, refit with the best C."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(folds, int(y.sum()), int(len(y) - y.sum()))
    if k < 2:
        raise ProbeFitError("too few records of one class in a training fold to choose C by cross-validation")
    pipeline = Pipeline([("scale", StandardScaler()), ("logreg", logistic_regression(1.0))])
    search = GridSearchCV(
        pipeline,
        {"logreg__C": list(C_GRID)},
        scoring="roc_auc",
        cv=StratifiedKFold(k, shuffle=True, random_state=seed),
        refit=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # a fold whose AUROC is undefined is skipped
        search.fit(x, y)
    return search


def bootstrap_auroc(y: np.ndarray, scores: np.ndarray, resamples: int, seed: int) -> tuple[float, float, int]:
    """The 2.5th and 97.5th percentiles of the AUROC over ``resamples`` resamplings of the records with
    replacement (seeded), and how many resamples had both classes (the others have no AUROC and are skipped)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        index = rng.integers(0, len(y), len(y))
        if 0 < y[index].sum() < len(index):
            values.append(roc_auc_score(y[index], scores[index]))
    if not values:
        return float("nan"), float("nan"), 0
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high), len(values)


def cross_validated_scores(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, int]:
    """Out-of-fold probabilities: each record scored by a pipeline selected and fit without it; and the folds."""
    from sklearn.model_selection import StratifiedKFold

    k = min(folds, int(y.sum()), int(len(y) - y.sum()))
    scores = np.zeros(len(y))
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
        scores[test] = _select(x[train], y[train], folds, seed).predict_proba(x[test])[:, 1]
    return scores, k


def fit_probe(
    embeddings: np.ndarray,
    labels: np.ndarray,
    targets: Sequence[str],
    *,
    name: str,
    pretrained_sha256: str,
    demo: bool,
    folds: int = DEFAULT_FOLDS,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    command: str = "",
    source: dict[str, Any] | None = None,
) -> Probe:
    """A probe for ``targets`` from embeddings ``[N, D]`` and 0/1 ``labels`` ``[N, T]`` of the same N records.

    Raises:
        ProbeFitError: shapes that do not match, labels other than 0/1, or a target with fewer than
            :data:`MIN_PER_CLASS` positive or negative records.
    """
    import sklearn
    import sklearn.linear_model
    import sklearn.model_selection  # loaded before the thread limit, so that it covers their OpenMP and BLAS
    from sklearn.metrics import roc_auc_score
    from threadpoolctl import threadpool_limits

    import ecgfm

    x = np.asarray(embeddings, dtype=np.float64)
    y_all = np.asarray(labels)
    if x.ndim != 2 or y_all.shape != (len(x), len(targets)):
        raise ProbeFitError(f"embeddings {list(x.shape)} and labels {list(y_all.shape)} of {len(targets)} targets")
    if not np.isfinite(x).all():
        raise ProbeFitError("the embeddings hold NaN or infinite values")
    if not np.isin(y_all, (0, 1)).all():
        raise ProbeFitError("labels must be 0 or 1")
    for target, y in zip(targets, y_all.T, strict=True):
        positives = int(y.sum())
        if min(positives, len(y) - positives) < MIN_PER_CLASS:
            raise ProbeFitError(
                f"target {target}: {positives} positive and {len(y) - positives} negative records; a probe needs at "
                f"least {MIN_PER_CLASS} of each (C is chosen by cross-validation inside a cross-validated estimate)"
            )
    coefs, intercepts, per_target, scaler = [], [], {}, None
    for target, y in zip(targets, y_all.T.astype(int), strict=True):
        with threadpool_limits(1):
            search = _select(x, y, folds, seed)
            scores, outer = cross_validated_scores(x, y, folds, seed)
        scaler, logreg = search.best_estimator_.named_steps["scale"], search.best_estimator_.named_steps["logreg"]
        coefs.append(logreg.coef_[0])
        intercepts.append(logreg.intercept_[0])
        low, high, used = bootstrap_auroc(y, scores, bootstrap, seed)
        per_target[target] = {
            "positives": int(y.sum()),
            "negatives": int(len(y) - y.sum()),
            "C": float(search.best_params_["logreg__C"]),
            "cv_auroc": float(roc_auc_score(y, scores)),
            "cv_auroc_95ci": [low, high],
            "bootstrap_resamples": used,
            "outer_folds": outer,
        }
    summary = {
        "records": len(x),
        "embed_dim": int(x.shape[1]),
        "targets": per_target,
        "method": {
            "model": "sklearn.linear_model.LogisticRegression (one per target) on sklearn StandardScaler inputs",
            "class_weight": "balanced",
            "solver": SOLVER,
            "max_iter": MAX_ITER,
            "tol": TOL,
            "C_grid": list(C_GRID),
            "C_selection": f"GridSearchCV, AUROC, StratifiedKFold(min({folds}, positives, negatives), shuffle, "
            f"random_state={seed}) on the training records",
            "estimate": "out-of-fold AUROC of a nested stratified k-fold (C and scaler chosen without the fold)",
            "bootstrap": {"resamples": bootstrap, "seed": seed, "interval": 0.95},
        },
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "source": source or {},
        "versions": {"ecgfm-serve": ecgfm.__version__, "scikit-learn": sklearn.__version__},
    }
    assert scaler is not None
    return Probe(
        name=name,
        targets=tuple(targets),
        coef=np.asarray(coefs, dtype=np.float64),
        intercept=np.asarray(intercepts, dtype=np.float64),
        mean=np.asarray(scaler.mean_, dtype=np.float64),
        scale=np.asarray(scaler.scale_, dtype=np.float64),
        pretrained_sha256=pretrained_sha256,
        demo=demo,
        summary=summary,
    )

"""scikit-learn's ``memory=`` with a ``cachelib.Cache`` and a ``cachelib.Memory``.

A transformer logs each real ``fit`` to a file (its ``log`` parameter), so that fits in
GridSearchCV's worker processes count too: a second fit of the same pipeline on the
same data must refit no transformer.
"""

from __future__ import annotations

import numpy as np
import pytest

import cachelib

pytestmark = pytest.mark.timeout(240)
sklearn = pytest.importorskip("sklearn", reason="scikit-learn (the test extra) is not installed")

from sklearn.base import BaseEstimator, TransformerMixin  # noqa: E402
from sklearn.cluster import AgglomerativeClustering  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402


class LoggedScaler(TransformerMixin, BaseEstimator):
    """Centers and scales; appends a line to ``log`` at each real fit."""

    def __init__(self, log: str = "", scale: float = 1.0) -> None:
        self.log = log
        self.scale = scale

    def fit(self, X, y=None):
        with open(self.log, "a") as handle:
            handle.write(f"{X.shape[0]}\n")
        self.mean_ = X.mean(axis=0)
        return self

    def transform(self, X):
        return (X - self.mean_) * self.scale


def fits(log) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return X, y


@pytest.fixture(params=["Cache", "Memory"])
def memory(request, tmp_path):
    location = tmp_path / "cache"
    if request.param == "Cache":
        return cachelib.Cache(location)
    return cachelib.Memory(location, verbose=0)


def test_pipeline_second_fit_refits_nothing(memory, data, tmp_path):
    X, y = data
    log = tmp_path / "fits.log"
    pipeline = Pipeline([("scale", LoggedScaler(str(log))), ("clf", LogisticRegression())], memory=memory)
    first = pipeline.fit(X, y).predict_proba(X)
    assert fits(log) == 1
    second = pipeline.fit(X, y).predict_proba(X)
    assert fits(log) == 1
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(pipeline.named_steps["scale"].mean_, X.mean(axis=0))
    pipeline.set_params(scale__scale=2.0).fit(X, y)  # another transformer: a new fit
    assert fits(log) == 2


def test_make_pipeline_second_fit_refits_nothing(memory, data, tmp_path):
    X, y = data
    log = tmp_path / "fits.log"
    first = make_pipeline(LoggedScaler(str(log)), LogisticRegression(), memory=memory).fit(X, y)
    second = make_pipeline(LoggedScaler(str(log)), LogisticRegression(), memory=memory).fit(X, y)
    assert fits(log) == 1
    np.testing.assert_array_equal(first.predict(X), second.predict(X))


@pytest.mark.slow  # worker processes: test_pipeline_second_fit_refits_nothing is the quick case
def test_grid_search_in_two_processes_fits_each_split_once(memory, data, tmp_path):
    X, y = data
    log = tmp_path / "fits.log"
    pipeline = Pipeline([("scale", LoggedScaler(str(log))), ("clf", LogisticRegression())], memory=memory)
    search = GridSearchCV(pipeline, {"clf__C": [0.1, 1.0, 10.0]}, cv=3, n_jobs=2)
    search.fit(X, y)
    # 3 splits and the refit on all the data: 4 distinct fits, however many candidates and workers.
    assert fits(log) == 4
    best = search.best_params_
    again = GridSearchCV(pipeline, {"clf__C": [0.1, 1.0, 10.0]}, cv=3, n_jobs=2).fit(X, y)
    assert fits(log) == 4
    assert again.best_params_ == best
    np.testing.assert_array_equal(again.cv_results_["mean_test_score"], search.cv_results_["mean_test_score"])


def test_estimators_calling_memory_cache_directly(memory, data):
    X, _ = data
    first = AgglomerativeClustering(n_clusters=3, memory=memory, compute_full_tree=True).fit(X).labels_
    second = AgglomerativeClustering(n_clusters=3, memory=memory, compute_full_tree=True).fit(X).labels_
    np.testing.assert_array_equal(first, second)
    info = memory.info()
    assert info.entries == 1
    assert info.hits == 1


@pytest.mark.parametrize(
    "disabled", [cachelib.Cache(None), cachelib.Memory(None, verbose=0)], ids=["Cache", "Memory"]
)
def test_no_location_fits_every_time_without_cloning(disabled, data, tmp_path):
    X, y = data
    log = tmp_path / "fits.log"
    scaler = LoggedScaler(str(log))
    pipeline = Pipeline([("scale", scaler), ("clf", LogisticRegression())], memory=disabled)
    pipeline.fit(X, y)
    pipeline.fit(X, y)
    assert fits(log) == 2
    assert pipeline.named_steps["scale"] is scaler  # location None: scikit-learn does not clone

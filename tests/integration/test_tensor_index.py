"""The aggregator's dict-indexed TensorDB answers as OpenFL's pandas one does, in a fraction of the time
(it is what kept the sites waiting seconds between a round's last result and the next round)."""

from __future__ import annotations

import time

import numpy as np
from openfl.databases.tensor_db import TensorDB
from openfl.interface.aggregation_functions import WeightedAverage
from openfl.utilities import TensorKey, change_tags

from cofe_cli.engine.tensor_index import IndexedTensorDB

WEIGHTS = {"site_a": 0.5, "site_b": 0.3, "site_c": 0.2}
MODEL = {f"layer{i}.weight": np.random.default_rng(i).normal(size=(8, 8, 3)).astype(np.float32) for i in range(150)}


def _close_a_round(db: TensorDB) -> dict:
    """What the aggregator does with a round's results: aggregate, relabel, look up, list, clean up."""
    db.cache_tensor({TensorKey(name, "agg", 1, False, ("model",)): value for name, value in MODEL.items()})
    for factor, site in enumerate(WEIGHTS, start=1):
        db.cache_tensor({TensorKey(name, "agg", 1, False, change_tags(("trained",), add_field=site)): value * factor
                         for name, value in MODEL.items()})
        metric = TensorKey("valid_dice", "agg", 1, True, change_tags(("metric", "validate_agg"), add_field=site))
        db.cache_tensor({metric: np.array(factor / 10)})
    answers = {}
    for name in MODEL:
        aggregated = db.get_aggregated_tensor(TensorKey(name, "agg", 1, False, ("trained",)), WEIGHTS, WeightedAverage())
        db.cache_tensor({TensorKey(name, "agg", 2, False, ("model",)): aggregated + 1})
        db.cache_tensor({TensorKey(name, "agg", 2, False, ("model",)): aggregated + 5})  # the first value stays
        answers[name] = db.get_tensor_from_cache(TensorKey(name, "agg", 2, False, ("model",)))
    dice = TensorKey("valid_dice", "agg", 1, True, ("metric", "validate_agg"))
    answers["dice"] = db.get_aggregated_tensor(dice, WEIGHTS, WeightedAverage())
    answers["dice again"] = db.get_aggregated_tensor(dice, WEIGHTS, WeightedAverage())[0]
    answers["incomplete"] = db.get_aggregated_tensor(TensorKey("nowhere", "agg", 1, False, ("trained",)), WEIGHTS,
                                                     WeightedAverage())
    answers["missing"] = db.get_tensor_from_cache(TensorKey("nowhere", "agg", 1, False, ("model",)))
    answers["next model"] = sorted(key.tensor_name for key in db.get_tensors_by_round_and_tags(2, ("model",)))
    db.clean_up(1)
    frame = db.tensor_db.drop_duplicates(subset=["tensor_name", "origin", "round", "report", "tags"])
    answers["kept"] = sorted(zip(frame["tensor_name"], frame["round"].astype(int), frame["report"].astype(bool)))
    return answers


def _same(a, b) -> bool:
    if a is None or b is None or isinstance(a, list):
        return a == b
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_indexed_tensor_db_answers_as_openfls_and_fast():
    started = time.perf_counter()
    expected = _close_a_round(TensorDB())
    pandas_seconds = time.perf_counter() - started
    started = time.perf_counter()
    answers = _close_a_round(IndexedTensorDB())
    indexed_seconds = time.perf_counter() - started
    assert answers.keys() == expected.keys()
    for name in expected:
        assert _same(answers[name], expected[name]), name
    assert indexed_seconds * 10 < pandas_seconds, (indexed_seconds, pandas_seconds)


def test_indexed_tensor_db_takes_over_openfls_contents():
    db = TensorDB()
    db.cache_tensor({TensorKey(name, "agg", 0, False, ("model",)): value for name, value in MODEL.items()})
    db.cache_tensor({TensorKey("layer0.weight", "agg", 0, False, ("model",)): np.zeros(1)})  # a later duplicate
    indexed = IndexedTensorDB.of(db)
    for name, value in MODEL.items():
        assert np.array_equal(indexed.get_tensor_from_cache(TensorKey(name, "agg", 0, False, ("model",))), value)

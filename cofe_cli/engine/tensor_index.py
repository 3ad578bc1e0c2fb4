"""OpenFL's TensorDB with its tensors in a dict instead of a pandas DataFrame.

OpenFL's aggregator finds every tensor by filtering a DataFrame on five columns and stores each
one with a pd.concat of the whole frame: a few milliseconds per tensor. Closing a round touches
each of the model's tensors about ten times (aggregate, relabel, save best and last model), so
the demo's 155-tensor model kept every site waiting 2-3 s between the last result and the next
round, and each site's model download (one lookup per tensor) cost as much again. Here a lookup
or insert is a dict operation. Same answers as TensorDB: the first value stored under a key is
the one returned; the DataFrame is built only for what still asks for it (privileged or
history-reading aggregation functions, the debug dump).
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import pandas as pd
from openfl.databases.tensor_db import TensorDB
from openfl.databases.utilities import ROUND_PLACEHOLDER
from openfl.utilities import LocalTensor, TensorKey, change_tags

_COLUMNS = ["tensor_name", "origin", "round", "report", "tags", "nparray"]


class IndexedTensorDB(TensorDB):
    def __init__(self, tensors: Dict[TensorKey, np.ndarray] | None = None) -> None:
        self._tensors: Dict[TensorKey, np.ndarray] = {}
        super().__init__()  # sets the (empty) frame below, and the mutex
        self._tensors.update(tensors or {})

    @classmethod
    def of(cls, db: TensorDB) -> "IndexedTensorDB":
        """The same contents as an OpenFL TensorDB (first value of a key wins, as there)."""
        tensors: Dict[TensorKey, np.ndarray] = {}
        for row in db.tensor_db.itertuples(index=False):
            key = TensorKey(row.tensor_name, row.origin, int(row.round), bool(row.report), tuple(row.tags))
            tensors.setdefault(key, row.nparray)
        return cls(tensors)

    @property
    def tensor_db(self) -> pd.DataFrame:
        rows = [[*key, value] for key, value in self._tensors.items()]
        frame = pd.DataFrame(rows, columns=_COLUMNS)
        return frame.astype({"tensor_name": "string", "origin": "string", "round": "int32", "report": "bool"})

    @tensor_db.setter
    def tensor_db(self, frame: pd.DataFrame) -> None:
        self._tensors = {}
        for row in frame.itertuples(index=False):
            key = TensorKey(row.tensor_name, row.origin, int(row.round), bool(row.report), tuple(row.tags))
            self._tensors.setdefault(key, row.nparray)

    def _bind_convenience_methods(self):
        pass  # OpenFL binds helpers to the frame object, which here is rebuilt on each access

    def cache_tensor(self, tensor_key_dict: Dict[TensorKey, np.ndarray]) -> None:
        with self.mutex:
            for key, value in tensor_key_dict.items():
                self._tensors.setdefault(_key(key), value)

    def get_tensor_from_cache(self, tensor_key: TensorKey) -> Optional[np.ndarray]:
        value = self._tensors.get(_key(tensor_key))
        return None if value is None else np.asarray(value)

    def get_tensors_by_filter(self, custom_filter=None) -> dict:
        selected = {}
        for key, value in list(self._tensors.items()):
            row = dict(zip(_COLUMNS, (*key, value)))
            if custom_filter is None or custom_filter(row):
                selected[key] = np.asarray(value)
        return selected

    def get_tensors_by_round_and_tags(self, fl_round: int, tags: tuple) -> dict:
        tags = tuple(tags)
        return {key: np.asarray(value) for key, value in list(self._tensors.items())
                if key.round_number == fl_round and key.tags == tags}

    def get_aggregated_tensor(self, tensor_key, collaborator_weight_dict, aggregation_function):
        if collaborator_weight_dict:
            assert np.abs(1.0 - sum(collaborator_weight_dict.values())) < 0.01, (
                f"Collaborator weights do not sum to 1.0: {collaborator_weight_dict}")
        tensor_key = _key(tensor_key)
        tensor_name, origin, fl_round, report, tags = tensor_key
        if tensor_key in self._tensors:
            return np.asarray(self._tensors[tensor_key]), {}  # (OpenFL's TensorDB answers a pair here too)
        local_tensors = []
        for collaborator, weight in collaborator_weight_dict.items():
            value = self._tensors.get(TensorKey(tensor_name, origin, fl_round, report,
                                                tuple(change_tags(tags, add_field=collaborator))))
            if value is None:
                return None
            local_tensors.append(LocalTensor(col_name=collaborator, tensor=value, weight=weight))
        if getattr(aggregation_function, "_privileged", False):
            with self.mutex:
                aggregated = aggregation_function(local_tensors, self.tensor_db, tensor_name, fl_round, tags)
            self.cache_tensor({tensor_key: aggregated})
            return np.array(aggregated)
        aggregated = aggregation_function(local_tensors, self._iterate(), tensor_name, fl_round, tags)
        self.cache_tensor({tensor_key: aggregated})
        return np.asarray(aggregated)

    def clean_up(self, remove_older_than: int = 1) -> None:
        if remove_older_than < 0 or not self._tensors:
            return
        with self.mutex:
            rounds = sorted({key.round_number for key in self._tensors})
            current = rounds[-1]
            if current == ROUND_PLACEHOLDER and len(rounds) > 1:
                current = rounds[-2]
            self._tensors = {key: value for key, value in self._tensors.items()
                             if key.round_number > current - remove_older_than or key.report}


def _key(key) -> TensorKey:
    tensor_name, origin, fl_round, report, tags = key
    return TensorKey(tensor_name, origin, int(fl_round), bool(report), tuple(tags))

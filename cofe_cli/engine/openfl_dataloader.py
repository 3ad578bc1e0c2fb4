"""The data loader class the plan names: OpenFL's GaNDLF wrapper, with the patch size as feature shape."""

import os

from openfl.federated.data.loader_gandlf import GaNDLFDataLoaderWrapper


class GaNDLFDataLoader(GaNDLFDataLoaderWrapper):
    def __init__(self, data_path=None, feature_shape=None, **kwargs):
        super().__init__(data_path=data_path, **kwargs)
        if data_path is not None:
            # OpenFL drops train.csv for any path containing "inference" (e.g. /data/inference_study).
            self.train_csv = os.path.join(data_path, "train.csv")
        # Model initialisation happens before any data is loaded, so the shape comes from the plan.
        self.feature_shape = list(feature_shape or [])

    def get_feature_shape(self):
        return self.feature_shape

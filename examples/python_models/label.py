"""Example Python model: post-processing. Class probabilities in, the best class's label
(BYTES) and its score out. The labels and the score below which the answer is "unknown" come
from this model's config.toml ([parameters]), handed to load()."""

import numpy as np


class Model:
    inputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]}]
    outputs = [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "score", "datatype": "FP32", "shape": [-1]},
    ]

    def load(self, model_dir, config):
        parameters = config["parameters"]
        self.labels = np.array([s.encode() for s in parameters["labels"]] + [b"unknown"], dtype=object)
        self.min_score = float(parameters.get("min_score", 0.0))

    def infer(self, inputs):
        probabilities = inputs["probabilities"]
        best = probabilities.argmax(axis=1)
        score = probabilities[np.arange(len(best)), best]
        if probabilities.shape[1] != len(self.labels) - 1:
            raise ValueError(f"{probabilities.shape[1]} classes, but {len(self.labels) - 1} labels are configured")
        best[score < self.min_score] = len(self.labels) - 1
        return {"label": self.labels[best], "score": score.astype(np.float32)}

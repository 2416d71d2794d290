"""The one inference path: checkpoints loaded safely, preprocessing, test-time augmentation, ensembles, study
aggregation and thresholds, used by evaluate, predict, Torch Hub, export and the CAM callback; and the explanations
of its predictions (`explain`: Grad-CAM maps, overlays and localisation scores)."""

"""The one inference path: checkpoints loaded safely, preprocessing, test-time augmentation, ensembles, study
aggregation and thresholds, used by evaluate, predict, Torch Hub, export and the CAM callback; and the explanations
of its predictions (`explain`: Grad-CAM maps, overlays and localisation scores)."""

from mura_lightning._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "model": ["InferenceModel"],
        "checkpoints": ["CheckpointError", "checkpoint_paths", "load_classifier", "read_checkpoint"],
        "files": ["FilePredictions", "predict_files"],
        "tta": ["TestTimeAugmentation"],
        "aggregate": ["aggregate_studies"],
        "device": ["choose_device"],
        "explain": ["batch_cams", "compute_cams", "overlay", "pointing_game", "study_cams"],
    },
)

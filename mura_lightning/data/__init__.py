"""The data side of mura-lightning: MURA index, splits, image decoding, preprocessing presets and the DataModule."""

from mura_lightning._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "datamodule": ["MURADataModule"],
        "index": ["BODY_PARTS", "MuraDataError", "MuraIndex", "build_index", "resolve_body_parts", "select_body_parts"],
        "splits": ["holdout_patients", "patient_folds"],
        "images": ["read_grayscale"],
        "presets": ["BatchAugment", "EvalPreset", "Preprocessing", "TrainPreset"],
        "cache": ["ImageCache"],
        "dataset": ["MuraImageDataset"],
        "study_batches": ["ImageBatches", "StudyBatchSampler", "pack_studies"],
        "lesions": ["lesion_boxes_by_path", "read_lesion_boxes", "read_lesion_rows", "scale_boxes"],
    },
)

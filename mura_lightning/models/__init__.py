"""Models: torchvision backbones with one logit, the losses, the study poolings, and the LightningModule."""

from mura_lightning._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "module": ["MURAClassifier"],
        "loss_watch": ["LossWatch", "NonFiniteLossError"],
        "backbones": ["BackboneSpec", "PretrainedWeightsError", "backbone_spec", "build_backbone"],
        "losses": ["BCELoss", "FocalLoss", "MuraLoss", "WeightedBCELoss"],
        "pooling": ["POOLINGS", "StudyPooling", "StudyScores", "ViewOutputs", "build_pooling"],
        "segments": ["OneStudy", "Segments"],
        "study_network": ["StudyNetwork"],
    },
)

"""mura-lightning: PyTorch Lightning + Hydra experiments for abnormality detection on MURA radiographs."""

__version__ = "0.1.0"

from mura_lightning import resolvers

resolvers.register()

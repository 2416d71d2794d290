"""Models: torchvision backbones with one logit, the losses, and the LightningModule."""

"""The data side of mura-lightning: MURA index, splits, image decoding, transforms and the DataModule."""

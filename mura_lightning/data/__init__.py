"""The data side of mura-lightning: MURA index, splits, image decoding, preprocessing presets and the DataModule."""

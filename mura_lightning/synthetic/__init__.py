"""Synthetic MURA-v1.1: radiograph-like PNGs in the official layout, with lesion boxes for localisation.

`python -m mura_lightning.synthetic root=DIR studies_per_part=N seed=S` (any knob of this package's
defaults.yaml can be overridden too) writes

    DIR/MURA-v1.1/{train,valid}/XR_<PART>/patientNNNNN/studyK_{positive,negative}/imageI.png
    DIR/MURA-v1.1/{train,valid}_image_paths.csv, {train,valid}_labeled_studies.csv  (headerless, as MURA)
    DIR/lesions.csv  (path,kind,x0,y0,x1,y1: one row per lesion, box in pixels, x1/y1 exclusive)

Each image is a bone layout of its body part (hollow-tube bones with bright cortex, trabecular texture,
soft-tissue haze) seen from a random view, exposed with random gain/gamma, blurred and noised, sometimes
with a bright L/R marker. An abnormal study has one lesion kind - fracture (dark jagged gap, displaced and
angulated fragment, at times a callus), hardware (metal plate with screws) or lytic spot (dark oval with a
sclerotic rim) - on one or more bones of most of its images; normal studies have none. Lesion sizes are
fractions of the image's long side, so they stay visible after resizing to 128 px; each body part's
`subtlety`, raised to the global `difficulty`, shrinks and fades its lesions (finger hardest, wrist and hand
plainest, as in the real MURA). The same seed gives
the same bytes in every file, however many workers render.

The stages, one module each: spec (settings and their defaults), plan (patients, studies, splits, labels),
anatomy and view (bones, placed in an image), draw and lesions (the attenuation grid), render (one image,
one study), write (files and CSVs), record (the settings kept in the tree, checked before a tree is reused);
datamodule holds SyntheticMURADataModule, which generates on first use.
"""

from mura_lightning.synthetic.spec import MIN_STUDIES_PER_PART, SyntheticDataError, SyntheticSpec, load_spec
from mura_lightning.synthetic.write import generate_synthetic_mura

__all__ = ["MIN_STUDIES_PER_PART", "SyntheticDataError", "SyntheticSpec", "generate_synthetic_mura", "load_spec"]

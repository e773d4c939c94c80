"""Published Dice numbers quoted beside ours in ``report.md``. Quoted, never rerun here.

Source: the "Performance" table of the MedSAM3 project README (github.com/exodusadamant/MedSAM3,
the README of arXiv 2511.19046, "MedSAM3: Delving into Segment Anything with Medical Concepts",
Liu et al. 2025; the same authors' contact addresses). The README does not say which prompt
setting (text only, or text + box) these numbers used, and the paper's own tables could not be
read from here to check; so no text-only or agent numbers are quoted (a third-party summary gives
an agent BUSI Dice of 0.8064, which could not be verified and is left out).

Dataset names are the paper's. Only ``busi`` and ``kvasir_seg`` are the same datasets as ours
(with different test splits); ISIC 2018 and RIM-ONE are listed on their own rows because our
nearest sets (isic2017, drishti_gs1) are different data.
"""

from __future__ import annotations

SOURCE = (
    "MedSAM3 README, 'Performance' table (github.com/exodusadamant/MedSAM3; paper: arXiv 2511.19046). "
    "Prompt setting not stated there; not verified against the paper's PDF."
)
METHODS = ("U-Net", "MedSAM", "SAM 3", "MedSAM-3")

# paper dataset -> method -> Dice
DICE: dict[str, dict[str, float]] = {
    "BUSI": {"U-Net": 0.7618, "MedSAM": 0.7514, "SAM 3": 0.7110, "MedSAM-3": 0.7772},
    "RIM-ONE": {"U-Net": 0.8480, "MedSAM": 0.8479, "SAM 3": 0.8303, "MedSAM-3": 0.8977},
    "ISIC 2018": {"U-Net": 0.8760, "MedSAM": 0.9177, "SAM 3": 0.8178, "MedSAM-3": 0.9058},
    "Kvasir-SEG": {"U-Net": 0.8244, "MedSAM": 0.7657, "SAM 3": 0.7671, "MedSAM-3": 0.8831},
}

# our dataset folder -> the paper's name for the same dataset
SAME_DATASET = {"busi": "BUSI", "kvasir_seg": "Kvasir-SEG"}
# paper datasets we do not have, with our nearest (different) data, for the footnote
NEAREST = {"ISIC 2018": "isic2017", "RIM-ONE": "drishti_gs1"}

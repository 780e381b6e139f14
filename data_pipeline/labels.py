"""The class names of the classification sets: one table for the training sources and the benchmark registry.

A classification question's options are its set's class names (docs/paper.md, "Training sources"), so the
training entries (`configs/full_mix.py`) and the evaluation registry (`data_pipeline/benchmarks.py`) both
read their names here: a grade is shown with the same option text at both stages.

Only sets whose raw labels are not already names are mapped. APTOS and MESSIDOR-2 grade diabetic retinopathy
0 to 4 (the International Clinical DR scale); OctoMed's released trace sets show grade 0 as "No DR". The
other sets' releases name their classes (folder names), which become the options as written, except
CoronaHack's `Label` column, whose "Pnemonia" is shown spelled right.
"""

from __future__ import annotations

from collections.abc import Mapping

# Raw grade -> option text, in grade order (the order also fixes the option set: all five grades).
DR_GRADES: Mapping[str, str] = {
    "0": "No DR",
    "1": "Mild DR",
    "2": "Moderate DR",
    "3": "Severe DR",
    "4": "Proliferative DR",
}

# CoronaHack's metadata `Label` column as released (its spelling "Pnemonia") -> option text.
CORONAHACK_LABELS: Mapping[str, str] = {"Normal": "Normal", "Pnemonia": "Pneumonia"}

# Classification set -> raw label -> option text.
LABEL_NAMES: Mapping[str, Mapping[str, str]] = {
    "aptos": DR_GRADES,
    "messidor2": DR_GRADES,
    "coronahack": CORONAHACK_LABELS,
}


def label_names(name: str) -> dict[str, str]:
    """The label map of classification set `name` (a fresh dict, safe to put in a config).

    Raises:
      KeyError: `name` has no map (its release names the classes itself); the message lists the mapped sets.
    """
    if name not in LABEL_NAMES:
        raise KeyError(f"no label names for {name!r}; mapped sets: {sorted(LABEL_NAMES)} (data_pipeline/labels.py)")
    return dict(LABEL_NAMES[name])

"""``brainkernels demo``: the three methods end to end on the embedded synthetic cohorts, and one
report (HTML with the images embedded, and Markdown) with their figures, metrics, the paper-scale
memory table, the settings and the wall time of each stage."""

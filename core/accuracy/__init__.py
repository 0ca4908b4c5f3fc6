"""Accuracy and area assessment of a segmented tile (issue 22), QGIS-free.

The good-practice chain of Olofsson et al. (2014, RSE 148:42-57): a stratified random
sample of the map (:mod:`.design`), reference labels for the sample units (made by a
person, in QGIS), then stratified estimators of accuracy and error-adjusted area with
standard errors and 95 % confidence intervals (:mod:`.estimate`; Stehman 2014, IJRS
35:4923-4939, when the strata are not the map classes), reported as HTML and JSON
(:mod:`.report`). :mod:`.cli` adds ``s2seg sample-design`` and ``s2seg assess``.
"""

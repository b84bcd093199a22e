"""Scaling studies: the study config, the demo, the curve fit and plot, the report (the workflow that
runs them is ``magdi_dist.recipes.study``)."""

"""Scaling studies: the sweep runner, the curve fit and plot."""

"""GUI-free engine of napari-nmsr: numpy, torch, scikit-image, scipy only.

Nothing in this package imports Qt, napari or magicgui; everything here is
usable from Python scripts and the ``nmsr`` command line.
"""

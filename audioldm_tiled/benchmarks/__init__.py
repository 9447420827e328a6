"""Benchmarks of the tiled stages (``audioldm-tiled bench``): runner, measured stages, report and seam metric.

Tools beside the library: ``import audioldm_tiled`` never imports this package.
"""

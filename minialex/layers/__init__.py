"""One module per layer family; each opens with its forward formula and gradient.

``_common.py`` is not a layer: it holds the argument checks, the output-size formula, the
strided-window helpers and the CPU threads that the layer files share.
"""

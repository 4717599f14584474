"""One module per layer family; each opens with its forward formula and gradient, then a plain
NumPy forward and backward (the reference), the Function that picks the fast path
(:mod:`minialex.cpu` or :mod:`minialex.cuda`) in one line, the functional form and the Module.
"""

"""One module per layer family; each opens with its forward formula and gradient."""

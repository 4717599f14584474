"""Writes tests/weights/fixtures/: small ``torch.save`` files in both formats, and the arrays
they hold as ``tiny_expected.npz``, so that CI tests the reader where PyTorch is absent.

Run once by hand with PyTorch installed (``python tests/weights/make_fixtures.py``); the tests
only read the committed files. The tensors cover what the reader must get right: a transposed
(non-contiguous) tensor, one at a storage offset, two sharing a storage, a 0-d tensor, a
Parameter (``_rebuild_parameter``), and float16, float64, bfloat16 and int64 storages.
"""
import collections
import pathlib

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent / "fixtures"


def tiny_state_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    shared = torch.randn(10, generator=g)
    return collections.OrderedDict([
        ("features.0.weight", torch.randn(3, 2, 3, 3, generator=g)),
        ("transposed", base.t()),                          # stride (1, 6)
        ("offset_slice", base[1:3, 2:5]),                  # offset 8, stride (6, 1)
        ("shared_a", shared[:4]), ("shared_b", shared[6:].view(2, 2)),
        ("scalar", torch.tensor(2.5)),
        ("half", torch.randn(5, generator=g).half()),
        ("double", torch.randn(2, 3, generator=g, dtype=torch.float64)),
        ("bfloat16", torch.randn(3, generator=g).bfloat16()),
        ("steps", torch.tensor([7, -3], dtype=torch.int64)),
        ("parameter", torch.nn.Parameter(torch.randn(2, generator=g))),
    ])


def main():
    HERE.mkdir(exist_ok=True)
    state = tiny_state_dict()
    torch.save(state, HERE / "tiny_zip.pth")
    torch.save(state, HERE / "tiny_legacy.pth", _use_new_zipfile_serialization=False)
    np.savez(HERE / "tiny_expected.npz",
             **{k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy()
                for k, v in state.items()})


if __name__ == "__main__":
    main()

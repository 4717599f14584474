r"""The fast CPU side of minialex, as :mod:`minialex.cuda` is the GPU side.

Each layer file in ``minialex/layers/`` holds the math and a plain NumPy forward and backward,
short enough to check by eye; that plain version is the reference these functions are tested
against. A layer picks its fast path in one line, ``cuda.X if is_gpu_array(x) else cpu.X``,
and the two have the same signature and return the same layout.

What makes these fast, and where it lives:

- :mod:`.threads`: the cores this process may use (affinity and cgroup quota), a pool of
  sleeping workers that take pieces of a pass in turn, BLAS held to one thread inside it, and
  the fixed cuts that keep a sum's bits independent of the core count;
- :mod:`.scratch`: each thread's reusable temporaries, so no pass faults in fresh pages;
- :mod:`.conv`: convolution a block of images at a time;
- :mod:`.pool`: max pooling by stride phases and a scatter-add;
- :mod:`.elementwise`: ReLU forward and backward in slices;
- :mod:`.gemm`: a matrix product cut into blocks (``linear``);
- :mod:`.update`: the optimiser's update chunk by chunk.
"""
from .conv import conv2d_backward, conv2d_forward
from .elementwise import relu_backward, relu_forward
from .gemm import matmul
from .pool import max_pool_backward, max_pool_forward
from .threads import cpu_threads
from .update import chunked_update

__all__ = ["chunked_update", "conv2d_backward", "conv2d_forward", "cpu_threads", "matmul",
           "max_pool_backward", "max_pool_forward", "relu_backward", "relu_forward"]

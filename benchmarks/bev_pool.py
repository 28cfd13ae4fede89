"""Time every bev_pool backend on the canonical workload and write ``benchmarks/results/<device-slug>.json``.

The same as ``bevnb bench bevpool``; ``bevnb.bevpool.bench`` says what is measured and how. On a GPU, add ``--sweep``
to time the Triton kernels' launch shapes as well.

    python benchmarks/bev_pool.py [--backends torch triton-atomic] [--dtypes float16] [--sweep]
"""

import sys

from bevnb.bevpool.bench import main

if __name__ == "__main__":
    sys.exit(main())

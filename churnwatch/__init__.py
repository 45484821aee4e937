"""churnwatch."""

import os

# The buyer model's small fits (churnwatch.core.buyers) call BLAS on tiny matrices; a
# multi-threaded BLAS spins up its threads for each call and runs 20 times slower, and its
# threads would compete with the dataflow's workers. One BLAS thread per process, unless the
# operator says otherwise (this must be set before numpy is first imported).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

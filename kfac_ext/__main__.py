import os
import sys

from kfac_ext.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun worker leaves without interpreter shutdown, its output flushed and
    # every file closed by now. DistributedDataParallel keeps the Gloo process group
    # alive past destroy_process_group(), and a Gloo worker thread that drops a
    # finished collective's tensors during shutdown needs the GIL, cannot get it, and
    # aborts the process after its work is done ("terminate called without an active
    # exception": about 1 run in 25 on a busy 2-core machine; docs/distributed.md).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)

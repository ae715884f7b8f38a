"""`zolightning fit` whose second write of last.ckpt stops halfway (bytes on disk, file open) and says so on stderr,
so that a test can SIGKILL the process in the middle of the write. Arguments: those of `zolightning fit`."""

import sys
import time

from zolightning.callbacks.stopping import DurableCheckpointIO
from zolightning.cli.main import main

write = DurableCheckpointIO.write
saves = []


def write_then_hang(checkpoint, stream):
    if ".last.ckpt." in stream.name:  # the temporary file of last.ckpt (not the best-by-dev file)
        saves.append(checkpoint["global_step"])
    if len(saves) < 2 or ".last.ckpt." not in stream.name:
        return write(checkpoint, stream)
    stream.write(b"PK\x03\x04" + b"\0" * 4096)  # the start of a zip, as torch.save begins one
    stream.flush()
    print(f"blocked in the checkpoint write of step {checkpoint['global_step']}", file=sys.stderr, flush=True)
    time.sleep(600)


DurableCheckpointIO.write = staticmethod(write_then_hang)
main(["fit", *sys.argv[1:]])

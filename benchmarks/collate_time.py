"""Host time of building one training batch (sampling + collation), the work between two fast ZO steps.

    python -m benchmarks.collate_time --data-dir ../shared/data [--task sst2] [--tokenizer tiny-llama]

Prints milliseconds per `StepIndexedStream.batch` (indices + collate) and per `collate` alone, medians of
repeated calls on this machine's CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

from zolightning.data import TaskDataModule


def per_call_ms(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--tokenizer", default="tiny-llama")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=500)
    args = parser.parse_args()
    data = TaskDataModule(task=args.task, tokenizer=args.tokenizer, data_dir=args.data_dir, num_train=1000,
                          batch_size=args.batch_size)  # fmt: skip
    data.setup("fit")
    stream = data.train_dataloader().dataset
    examples = [stream.examples[i] for i in stream.indices(0)]
    batch_ms = per_call_ms(stream.batch, args.repeats)
    collate_ms = per_call_ms(lambda _: stream.collate(examples), args.repeats)
    shape = tuple(stream.collate(examples)["input_ids"].shape)
    print(f"{args.task} batch {args.batch_size} ({args.tokenizer}; input_ids {shape}): "
          f"batch {batch_ms:.3f} ms, collate {collate_ms:.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()

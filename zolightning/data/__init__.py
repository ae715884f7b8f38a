"""Tasks, their data sources, sampling, encoding and the DataModule."""

from zolightning.data.datamodule import TaskDataModule
from zolightning.data.multitask import MultiTaskDataModule
from zolightning.data.sources import DataError
from zolightning.data.tasks import TASKS, RenderedExample, Task, get_task

__all__ = ["TASKS", "DataError", "MultiTaskDataModule", "RenderedExample", "Task", "TaskDataModule", "get_task"]

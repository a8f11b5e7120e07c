"""The head-attribution stage of ``reproduce dai``: each head's effect on the label margin,
for ICL (removing its demonstration contribution) and FT (reverting its K/V update), on the
test queries of one replicate (:mod:`dualform.core.attribution` holds the math)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from dualform.core.attribution import ft_head_effects_mean, icl_head_effects, icl_head_effects_batch
from dualform.core.prefix import PrefixRun, auto_batch_size
from dualform.experiments.dai.conditions import PromptPair
from dualform.probes import hook_name

#: Test examples per FT attribution pass: each pass gives one observation of the FT effects.
FT_ATTRIBUTION_CHUNK = 8
#: Largest ICL attribution batch. With the shared-prefix attention the backward no longer keeps
#: a copy of the prefix's keys and values per row: on afinn-sentiment (3 seeds × 48 queries, 2
#: AVX-512 cores) the stage took 17.5 s in batches of 8 and 12.8 s in batches of 16 (12.9 s in
#: batches of 32) at the same peak memory.
ATTRIBUTION_BATCH_CAP = 16


def head_effects(model, ft, pairs: list[PromptPair], gold: list[int], label_ids: list[int], *,
                 reuse_prefix: bool = True, batch_size: int | None = None, desc: str = "",
                 progress: bool = False, run: PrefixRun | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Head-attribution effects on the test queries: ICL per example ``[example, layer, head]``
    (on the shared demonstration prefix in batches, or one full run per query with reuse off),
    FT per pass of :data:`FT_ATTRIBUTION_CHUNK` examples (the mean effect of the pass). ``run``:
    the demonstration prefix already run with the ``v`` hook (e.g. by the records)."""
    head = pairs[0].icl
    n_prefix = head.n_prefix
    items = list(zip(pairs, gold, strict=True))
    if not reuse_prefix:
        icl = [icl_head_effects(model, p.icl.tokens, p.demo_slice, label_ids, g)
               for p, g in tqdm(items, desc=desc, disable=not progress)]
    else:
        run = run or PrefixRun(model, head.tokens[:, :n_prefix], hooks=("v",))
        if run.length != n_prefix or hook_name("v", 0) not in run.capture.activations:
            raise ValueError("head_effects needs the demonstration prefix run with the 'v' hook")
        longest = max(p.icl.tokens.shape[-1] for p in pairs)
        size = batch_size or auto_batch_size(model, longest, longest - n_prefix, backward=True,
                                             cap=ATTRIBUTION_BATCH_CAP)
        icl = []
        for start in tqdm(range(0, len(pairs), size), desc=desc, disable=not progress):
            chunk = items[start : start + size]
            queries = [p.icl.tokens[0, n_prefix:] for p, _ in chunk]
            icl.extend(icl_head_effects_batch(run, queries, pairs[0].demo_slice, label_ids,
                                              [g for _, g in chunk]))
    ft_maps = [ft_head_effects_mean(ft, [p.zsl.tokens[0] for p, _ in chunk], label_ids,
                                    [g for _, g in chunk])
               for chunk in (items[i : i + FT_ATTRIBUTION_CHUNK]
                             for i in range(0, len(items), FT_ATTRIBUTION_CHUNK))]
    return torch.stack(icl).double().numpy(), torch.stack(ft_maps).double().numpy()

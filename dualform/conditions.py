"""The three conditions of Dai et al., recorded at the last prompt token.

* ZSL — the query alone on the pretrained model;
* ICL — demonstrations + query on the pretrained model;
* FT  — the query alone on the model after ``finetune_kv`` on the same demonstrations.

For each run we keep only what the metrics need, at the last position (the one that predicts
the label): label-word logits, the attention output of every layer (after W_O, before the
residual add), ``hook_z`` per head, the last row of the pre-softmax scores and the raw query
vector. All of it comes from one forward with focused hooks (see :mod:`dualform.probes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from dualform.dual_form import dual_form, score_hooks
from dualform.probes import capture
from dualform.tasks import Example, Prompt, PromptTokens, Task, build_prompt, prompt_tokens

RECORD_HOOKS = ("attn_out", "z", "scores", "q")


@dataclass
class Record:
    """One run of one condition, at the last token."""

    label_logits: Float[Tensor, " label"]
    attn_out: Float[Tensor, "layer d_model"]
    z: Float[Tensor, "layer head d_head"]
    scores: Float[Tensor, "layer head k_pos"]
    q: Float[Tensor, "layer head d_head"]
    icl_update: Float[Tensor, "layer head d_head"] | None = None
    norm_delta_w_icl: Float[Tensor, "layer head"] | None = None
    norm_w_zsl: Float[Tensor, "layer head"] | None = None

    @property
    def prediction(self) -> int:
        return int(self.label_logits.argmax())

    def margin(self, gold: int) -> float:
        """Correct-label logit minus the best other label logit."""
        others = torch.cat([self.label_logits[:gold], self.label_logits[gold + 1 :]])
        return float(self.label_logits[gold] - others.max())


@torch.no_grad()
def record(model, tokens: Tensor, label_ids: list[int], *, demo: PromptTokens | None = None) -> Record:
    """Run ``tokens`` (``[1, pos]``) and keep the last-token quantities of every layer.

    With ``demo`` (the ICL prompt's :class:`PromptTokens`) the same forward also yields the
    dual form: ``ΔW_ICL q`` and the norms of ΔW_ICL and W_ZSL per layer and head.
    """
    extra = score_hooks(model) if demo is not None else ()
    cap = capture(model, tokens, hooks=(*RECORD_HOOKS, *extra))
    last = -1
    rec = Record(
        label_logits=cap.logits[0, last, label_ids].float().cpu(),
        attn_out=cap.stack("attn_out")[:, 0, last].float().cpu(),
        z=cap.stack("z")[:, 0, last].float().cpu(),
        scores=cap.stack("scores")[:, 0, :, last].float().cpu().clone(),
        q=cap.stack("q")[:, 0, last].float().cpu(),
    )
    if demo is not None:
        df = dual_form(model, tokens, demo.n_demo_tokens, demo_start=demo.demo_start, cap=cap)
        norms = df.norms()
        rec.icl_update = df.icl_update().float().cpu()
        rec.norm_delta_w_icl = norms["delta_w_icl"].float().cpu()
        rec.norm_w_zsl = norms["w_zsl"].float().cpu()
    return rec


@dataclass
class PromptPair:
    """Token ids of one query with and without the demonstrations."""

    icl: PromptTokens
    zsl: PromptTokens

    @property
    def query_slice_icl(self) -> slice:
        """Key positions of the query's own tokens in the ICL prompt."""
        start = self.icl.demo_start + self.icl.n_demo_tokens
        return slice(start, None)

    @property
    def query_slice_zsl(self) -> slice:
        return slice(self.zsl.demo_start, None)

    @property
    def demo_slice(self) -> slice:
        return slice(self.icl.demo_start, self.icl.demo_start + self.icl.n_demo_tokens)


def prompt_pair(model, task: Task, demos: list[Example], query: Example) -> PromptPair:
    icl = prompt_tokens(model, build_prompt(task, demos, query))
    zsl = prompt_tokens(model, build_prompt(task, [], query))
    return PromptPair(icl, zsl)


def demo_training_texts(model, task: Task, demos: list[Example]) -> list[Tensor]:
    """The FT training sequences: each demonstration's tokens exactly as in the ICL prompt.

    Each formatted demonstration (with its separator) is tokenised on its own with a BOS in
    front, so that concatenating them without the BOS gives the ICL prompt's demonstration span
    token for token (checked by :func:`dualform.tasks.prompt_tokens`).
    """
    texts = []
    for demo in demos:
        one = Prompt(task.format(demo) + "\n", "", (demo,), demo, "\n")
        pt = prompt_tokens(model, one, check=False)
        texts.append(pt.tokens[0, : pt.demo_start + pt.n_demo_tokens])
    return texts

"""lm-eval's vLLM model, with loglikelihood requests that read vLLM's prefix cache (`evaluate.backend: vllm`).

lm-eval asks for prompt log-probabilities, for which vLLM skips reading its prefix cache by default, so
the few-shot context the options share is prefilled again for each. Here the cache is read; a request
whose continuation came from the cache (no log-probabilities) is scored again without it. A vLLM without
`skip_reading_prefix_cache` runs lm-eval's path unchanged, with one warning.
"""

from __future__ import annotations

import logging

from lm_eval.models.vllm_causallms import VLLM
from vllm import SamplingParams

log = logging.getLogger("platypus")


def cache_reading_params() -> SamplingParams | None:
    """lm-eval's loglikelihood sampling parameters, with the prefix cache read; None when this vLLM's
    SamplingParams has no skip_reading_prefix_cache."""
    try:
        return SamplingParams(
            temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False, skip_reading_prefix_cache=False
        )
    except TypeError:
        return None


class PrefixCachedVLLM(VLLM):
    """`prefix_stats`: requests sent reading the cache, and requests scored again without it."""

    prefix_stats: dict[str, int]

    def _model_generate(self, requests, generate=False, sampling_params=None):
        if generate:
            return super()._model_generate(requests, generate, sampling_params)
        stats = self.__dict__.setdefault("prefix_stats", {"read_cache": 0, "rescored": 0})
        params = cache_reading_params()
        if params is None:
            if not stats.get("warned"):
                stats["warned"] = 1
                log.warning("this vLLM has no skip_reading_prefix_cache: loglikelihood requests skip the prefix cache")
            return super()._model_generate(requests, False, None)
        stats["read_cache"] += len(requests)
        # generate=True only makes lm-eval use the parameters given; these still ask for one token
        return super()._model_generate(requests, True, params)

    def _parse_logprobs(self, tokens: list, outputs, ctxlen: int) -> tuple[float, bool]:
        if any(d is None for d in list(outputs.prompt_logprobs)[ctxlen:]):
            # the continuation was served from the cache (no logits): score this one without reading it
            self.prefix_stats["rescored"] += 1
            outputs = super()._model_generate([list(tokens)], False, None)[0]
        return VLLM._parse_logprobs(tokens, outputs, ctxlen)

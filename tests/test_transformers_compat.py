"""The model runs on the pinned transformers without deprecation warnings (a FutureWarning
today is an error in a later version the range would otherwise allow)."""

import warnings

import torch

from perceive.testing.tiny import tiny_vpt_model


def test_forward_and_cached_decode_raise_no_future_warning():
    model = tiny_vpt_model(branches=())
    ids = torch.tensor([[1, 2, 3, 4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = model(ids)  # the training / evaluation forward
        assert out.logits.shape[:2] == (1, 4)
        # the perception loop's path: prefill into a cache, then one decoded token through it
        from transformers import DynamicCache

        cache = DynamicCache(config=model.base.config.get_text_config())
        embeds = model.language_model.embed_tokens(ids)
        first = model.lm(embeds, None, None, cache, use_cache=True).last_hidden_state
        step = model.lm(model.language_model.embed_tokens(torch.tensor([[5]])), torch.full((3, 1, 1), 4), None,
                        cache, use_cache=True).last_hidden_state
    assert cache.get_seq_length() == 5  # the cache given is the one transformers filled
    full = model.lm(model.language_model.embed_tokens(torch.tensor([[1, 2, 3, 4, 5]]))).last_hidden_state
    torch.testing.assert_close(step[0, -1], full[0, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(first[0], full[0, :4], rtol=1e-4, atol=1e-4)

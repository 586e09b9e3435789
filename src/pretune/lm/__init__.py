"""Using pretrained language models as they are: generation, perplexity, fill-mask.

* :mod:`pretune.lm.generate`: text from a GPT (GPT-1 or GPT-2 family) with a key/value cache:
  greedy, temperature, top-k, top-p, repetition penalty, stop strings, batched prompts.
* :mod:`pretune.lm.score`: perplexity of a text under a GPT (sliding window with a stride), and a
  BERT's masked-LM pseudo-perplexity and accuracy.
* :mod:`pretune.lm.fill_mask`: a BERT's top-k tokens for every ``[MASK]``.
* :mod:`pretune.lm.common`: padded batches and the vocabulary limit (the model comes from
  :func:`pretune.loader.load_ready`, the loader of every verb).
* :mod:`pretune.lm.settings`: their settings (no torch), from which the commands' flags come.

Fine-tuned task models run through :mod:`pretune.inference`; contextual vectors and the sense
probe are in :mod:`pretune.embed` and :mod:`pretune.senses`.
"""

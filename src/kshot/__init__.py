"""kshot: embedding similarity search for few-shot image classification.

Data flows one way: image files -> ``embedder`` -> ``index`` -> ``fewshot`` -> ``cli``.
"""

__version__ = "0.1.0"

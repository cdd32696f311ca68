"""Few-shot classification over a library of enrolled images: catalogue, decisions, episodes."""

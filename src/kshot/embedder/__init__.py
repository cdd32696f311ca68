"""Image files -> unit-length embeddings: backbones, preprocessing, checkpoints, inference."""

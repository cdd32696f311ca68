"""Vector storage and search: a FAISS index of unit vectors under stable int64 ids."""

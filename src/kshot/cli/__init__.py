"""The ``kshot`` command line. Heavy modules (torch, faiss) are imported inside the commands, so
``kshot --help`` starts at once."""

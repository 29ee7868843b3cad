"""The training loop and its data parallelism, without Ray."""

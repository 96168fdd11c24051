"""The per-execution runtime API that scripts' helpers (input, output, variables, ...) call."""

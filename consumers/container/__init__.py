"""The container runner: one fresh, isolated Docker container per execution attempt."""

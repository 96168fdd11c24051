"""Workflows: DAGs of executions with validated data passing (definitions and the pure fold)."""

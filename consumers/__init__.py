"""Stateless workers that react to events: the dispatcher and the runners."""

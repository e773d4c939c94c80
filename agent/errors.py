"""Errors the agent raises with a message a user can act on."""


class PlannerError(RuntimeError):
    """The planner cannot go on (endpoint down, replies it cannot understand); the message says why."""

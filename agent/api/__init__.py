"""One blueprint per resource of the agent API."""

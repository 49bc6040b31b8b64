"""HTTP endpoints beside the daemon: operations (metrics, health) for now."""

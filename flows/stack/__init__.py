"""The local stack: `shrinkflow up` / `down` / `deploy`, the servers and deployments."""

"""The project workspace: params.yaml, its DVC versioning, the stores it names reachable."""

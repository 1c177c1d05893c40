"""qiaod: the engine behind a Docker-Engine-API-shaped HTTP socket."""

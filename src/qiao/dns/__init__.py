"""qiao's DNS resolver for user-defined networks (aardvark-dns's design)."""

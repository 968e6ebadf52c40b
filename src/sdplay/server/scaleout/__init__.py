"""Scale-out on Ray Serve: the same HTTP app as `sdplay serve`, over one engine replica per GPU (docs/scale-out.md)."""

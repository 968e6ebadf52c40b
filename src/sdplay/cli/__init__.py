"""Command-line interface: `sdplay <command>`."""

"""What every room uses: the config, errors, atomic files, image files and figures, locks, test hooks, provenance."""

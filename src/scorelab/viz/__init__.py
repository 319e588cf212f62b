"""Pictures: sample scatter plots and image grids, and the pictures that teach what a sampler does."""

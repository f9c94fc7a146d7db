"""A minimal TOM Toolkit project that pipekit's tests upload light curves to."""

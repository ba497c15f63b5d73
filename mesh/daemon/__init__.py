"""The peer daemon: a trio driver for NodeCore over Noise-secured UDP and TCP (`wasmatrix node run`)."""

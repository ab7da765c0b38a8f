"""bench-peers: our loop beside USB's FixMatch and Pseudo-Label on one protocol (see docs/bench-peers.md).

``protocol`` derives the shared split / model / steps / batch from our config, ``usb_run`` runs a USB
algorithm in the bench environment ``.venv-peers``, ``cputime`` measures an arm's process tree,
``table`` prints and plots; ``python -m bench.peers`` runs it all."""

"""Tributary's scoring runtime: serves a legacy `score.py` (init() and run()) over HTTP, with the collector wired in.

    python -m scoring --entry-script score.py --port 5001      # or: tributary-score ...

Its environment contract is `scoring.config` (the collector's is `collector.config`); scoring/README.md describes
the endpoints, what legacy scripts may rely on, and the Docker image. Importing this package is cheap: the server
(gunicorn) and the scoring script load only when the runtime starts.
"""

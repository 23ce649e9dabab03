"""An OpenAI-compatible HTTP server over ``AsyncLLM`` (``tokenleap serve``): protocol models (protocol.py),
response shapes (responses.py), the generation endpoints (routes.py, fanout.py), Prometheus metrics (metrics.py),
the app (app.py) and starting it (launch.py)."""

"""The engine in a process of its own: ``ProcessAsyncLLM`` (async_client), the engine process (child) and the
per-step request changes sent between them (deltas)."""

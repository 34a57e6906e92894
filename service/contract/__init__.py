"""The service's contract with the outside world, as pydantic models, pure: the webhook
bodies it sends (`webhooks`: one entry per event type) and what the admin API answers
(`admin`). `/openapi.json` and `docs/events.md` are generated from them, and the API
serializes its answers through them, so the document and the answers cannot drift apart."""

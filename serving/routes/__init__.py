"""The service's endpoints by concern: scoring, the model and health, admin (serving.app
includes them; the docs pages are serving.docs)."""

"""A FastAPI producer, a worker and the place where the dashboard is mounted (see
README.md in this folder)."""

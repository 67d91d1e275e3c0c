"""The REST front end (FastAPI, served by uvicorn): ``bastion api``."""

"""The factory as a service: an HTTP job API and a web gallery on one FastAPI app.

``create_app`` (``foundry3d.api.app``) builds it; ``foundry3d api`` serves it with uvicorn.
"""

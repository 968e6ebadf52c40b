"""sdplay's HTTP server: `create_app(settings, engine)` (in sdplay.server.app) and `run(settings)`.

Importing this package does nothing; FastAPI is imported by the modules that need it.
"""

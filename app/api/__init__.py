"""HTTP plumbing shared by the routes: dependencies, error handlers, middleware."""

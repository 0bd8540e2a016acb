"""Helpers of the browser UI (server-rendered pages and htmx partials): templating, page auth, forms, views."""

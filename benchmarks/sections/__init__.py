"""The suite's sections, one module each; each ``run(ctx)`` returns the section's JSON dict."""

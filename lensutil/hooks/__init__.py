"""Hook points, the hooked root module (add_hook, hooks(), run_with_hooks, run_with_cache) and the ActivationCache it returns."""

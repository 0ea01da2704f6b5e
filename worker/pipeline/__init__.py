"""Running one generation attempt: validate, render, call, and decide what comes next."""

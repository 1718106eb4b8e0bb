"""Running requests: plans and their caches, statements within their time, row budgets, each role's view."""

"""Long work that outlives the page or command that started it, run in its own process.

`store.JobStore` writes the `jobs` table; `runner.run_job` runs one job in this process
(`herd jobs run ID`) with heartbeats and cancellation; `spawn.spawn_job` starts that command
detached. The package knows job kinds only through `kinds.JobKinds`, the registry that maps
each `JobKind` to its handler, `run(ctx) -> dict`, in the package that defines the kind.
"""

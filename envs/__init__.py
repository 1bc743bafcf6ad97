"""Coding environments: tasks, suites, loaders, tools, sandboxes and pristine grading.

Knows nothing about models, tokens or RL. Standard library only, except the ``docker``
backend (the docker SDK) and Terminal-Bench ``task.yaml`` files (PyYAML), both imported only
when used. The modules:

* :mod:`envs.tasks`           -- :class:`~envs.tasks.Task` (instruction, repo files, hidden tests, grade and setup commands)
* :mod:`envs.suite`           -- the built-in bug-fix suite, splits, ``load_suite``
* :mod:`envs.loaders`         -- SWE-bench-style JSONL and Terminal-Bench-style task dirs as tasks
* :mod:`envs.swebench_runner` -- the SWE-bench grader that runs inside the grading sandbox
* :mod:`envs.tools`           -- :class:`~envs.tools.ToolCall` and the JSON-schema ``TOOL_SPECS``
* :mod:`envs.solver`          -- scripted demonstrations (``scripted_solution``)
* :mod:`envs.sandbox`         -- the sandbox interface and the bubblewrap ``local`` backend
* :mod:`envs.docker_sandbox`  -- the ``docker`` backend (one container per episode), ``cleanup_stale``
* :mod:`envs.pool`            -- warm, recyclable sandboxes (``SandboxPool``)
* :mod:`envs.env`             -- :class:`~envs.env.CodingEnv`: ``step`` / ``grade`` / ``close``
* :mod:`envs.cli`             -- ``horizonrl-env``: ``list``, ``run``, ``exec``, docker image and clean-up
* :mod:`envs.bench`           -- ``bench_sandbox``: tool-call latency, start time, live sandboxes
"""

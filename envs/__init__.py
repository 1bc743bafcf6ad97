"""Coding environments: tasks, suites, tools, sandboxes and pristine grading.

Knows nothing about models, tokens or RL; standard library only. The modules:

* :mod:`envs.tasks`   -- :class:`~envs.tasks.Task` (instruction, repo files, hidden tests, grade command)
* :mod:`envs.suite`   -- the built-in bug-fix suite, splits, ``load_suite``
* :mod:`envs.tools`   -- :class:`~envs.tools.ToolCall` and the JSON-schema ``TOOL_SPECS``
* :mod:`envs.solver`  -- scripted demonstrations (``scripted_solution``)
* :mod:`envs.sandbox` -- the sandbox interface and the bubblewrap ``local`` backend
* :mod:`envs.env`     -- :class:`~envs.env.CodingEnv`: ``step`` / ``grade`` / ``close``
"""

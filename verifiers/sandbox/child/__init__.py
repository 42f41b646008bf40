"""Code that runs in the sandbox's own processes: standard library only.

The fork servers import these modules by path (``python -I [-S]`` with this folder's parent on
``sys.path``), never through the ``ttscale`` package, so a solution's process holds nothing of
ttscale's but this code, and the harness's nothing it does not need.

- :mod:`.codec`: the strict value codec and the message framing (both sides).
- :mod:`.guard`: the audit hook, a second line behind the namespaces (solution side).
- :mod:`.confine`: namespaces, the read-only file view, limits, capabilities (solution side).
- :mod:`.solution`: the solution's serving loop: calls, handles, stdin/stdout programs.
- :mod:`.harness`: the trusted side: test formats, remote proxies, the verdict.
- :mod:`.forkserver`: the warm processes that fork one child per run, and the run's jobs.
"""

"""``genv enforce``: rules turn a snapshot into a plan; the executor carries it out."""

"""masklm's benchmarks: one module per question, run from the project root as `python -m benchmarks.NAME`.

Importing a module runs nothing (each starts in `main()` under `if __name__ == "__main__"`); common.py holds
what they share (data, models, machine facts, tables, docs). Results go to docs/benchmarks.md.
"""

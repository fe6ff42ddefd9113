"""The reliability suite's runner (`python -m services.reliability`, `make reliability`).

It runs tests/reliability with pytest — faults injected into a three-organisation mesh
of real processes, fuzzed bad input, refusals by identity, a leak scan of every log,
span, audit row, SQLite file, error message and what crossed the wire to the helper,
and a load of concurrent studies — then prints the summary table and, last, one line:

    reliability: faults S/N survived, bad inputs R/N rejected, refusals C/N correct, canary found: 1/1, leaks: K

Modules: `ledger` (what is counted and how it is summarised), `plugin` (pytest hooks
that feed the ledger), `leaks` (needles and the scanner).
"""
